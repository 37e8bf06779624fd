"""The MatFormer slice catalog: which sub-models of a checkpoint get a decoder graph.

Google's published mix-n-match configs (matformer_configs.csv, from the gemma3n-slicing-configs
dataset) are given for E4B as per-layer FFN widths (8192 or 16384) and skipped layers. They are
applied to any checkpoint of E4B structure (35 layers, uniform widths) by scaling each width by
the checkpoint's own: 8192 of 16384 becomes half of whatever the full width is.
"""
from __future__ import annotations

import csv
import os
import re

from gemma3n_rt.errors import Gemma3nError
from .hf_config import Gemma3nSource
from .text_decoder import SlicePlan

CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "matformer_configs.csv")
E4B_LAYERS, E4B_WIDTH = 35, 16384


def _width(expr: str) -> int:
    """'2_048 * 4' -> 8192 (the CSV's notation)."""
    m = re.fullmatch(r"\s*([\d_]+)\s*\*\s*(\d+)\s*", expr)
    if not m:
        raise ValueError(f"bad width {expr!r}")
    return int(m.group(1).replace("_", "")) * int(m.group(2))


def _name(csv_name: str) -> str:
    if csv_name == "Main model":
        return "E4B"
    if csv_name == "Config for official E2B Model":
        return "E2B"
    m = re.fullmatch(r"Config for (E[\d.]+B) \((layer|block)-level\)", csv_name)
    if not m:
        raise ValueError(f"unknown config name {csv_name!r}")
    return f"{m.group(1)}-{m.group(2)}"


def published_configs() -> list[dict]:
    """The CSV rows as {name, widths (E4B units), skip, effective_b, mmlu}."""
    rows = []
    with open(CSV, newline="") as f:
        for r in csv.DictReader(f):
            widths = [_width(w) for w in r["FFN Hidden Dims"].strip("[]").split(",")]
            skip = [int(x) for x in r["Layers Skipped"].strip("[]").split(",") if x.strip()]
            rows.append({"name": _name(r["name"]), "widths": widths, "skip": skip,
                         "effective_b": float(r["# Effective Params (B)"]),
                         "mmlu": float(r["MMLU PT accuracy"].rstrip("%"))})
    return rows


def reserved_layers(src: Gemma3nSource) -> tuple[int, int]:
    """The last unshared sliding and full layers, which store the K/V that shared layers read."""
    first_shared = src.num_layers - src.num_kv_shared_layers
    return first_shared - 2, first_shared - 1


def make_plan(src: Gemma3nSource, name: str, widths: list[int], skip: list[int], meta: dict | None = None) -> SlicePlan:
    """A validated slice. `widths` has the FFN width of every kept layer (the Lab's convention,
    indexed by the new layer index) or of every original layer (skipped ones then ignored)."""
    bad = sorted(set(skip) - set(range(src.num_layers)))
    if bad:
        raise Gemma3nError(f"slice {name}: cannot skip layers {bad}, the checkpoint has layers 0-{src.num_layers - 1}")
    reserved = [l for l in reserved_layers(src) if l in skip]
    if reserved:
        raise Gemma3nError(f"slice {name}: layers {list(reserved_layers(src))} store the shared K/V and cannot be skipped")
    kept = tuple(l for l in range(src.num_layers) if l not in set(skip))
    if len(widths) == src.num_layers:
        widths = [widths[l] for l in kept]
    if len(widths) != len(kept):
        raise Gemma3nError(f"slice {name}: {len(widths)} FFN widths given for {len(kept)} kept layers")
    for l, w in zip(kept, widths):
        if not 0 < w <= src.intermediate_sizes[l]:
            raise Gemma3nError(f"slice {name}: layer {l} FFN width {w} is not a prefix of the checkpoint's "
                               f"{src.intermediate_sizes[l]}")
    return SlicePlan(name, kept, tuple(widths), meta or {})


def default_catalog(src: Gemma3nSource) -> list[SlicePlan]:
    """E4B-structured checkpoints get every published slice; others just themselves."""
    full = make_plan(src, {35: "E4B", 30: "E2B"}.get(src.num_layers, "full"), list(src.intermediate_sizes), [])
    widths = set(src.intermediate_sizes)
    if src.num_layers != E4B_LAYERS or len(widths) != 1:
        return [full]
    scale = widths.pop() / E4B_WIDTH
    plans = []
    for row in published_configs():
        scaled = [max(1, round(w * scale)) for w in row["widths"]]
        meta = {"published_effective_b": row["effective_b"], "published_mmlu": row["mmlu"]}
        plans.append(make_plan(src, row["name"], scaled, row["skip"], meta))
    return plans


def parse_custom(src: Gemma3nSource, spec: str) -> SlicePlan:
    """'NAME=W,W,...[@SKIP]': widths per original layer (N*K repeats W K times), skipped layers
    as a comma list with ranges, e.g. 'mine=8192*20,16384*15@20-24'."""
    m = re.fullmatch(r"([A-Za-z0-9_.+-]+)=([^@]+)(?:@(.*))?", spec.strip())
    if not m:
        raise Gemma3nError(f"--custom-slice {spec!r} must look like NAME=W,W,...[@SKIP]")
    name, wtext, stext = m.group(1), m.group(2), m.group(3) or ""
    widths: list[int] = []
    try:
        for part in wtext.split(","):
            w, _, k = part.partition("*")
            widths += [int(w)] * (int(k) if k else 1)
        skip: list[int] = []
        for part in filter(None, stext.split(",")):
            a, _, b = part.partition("-")
            skip += list(range(int(a), int(b or a) + 1))
    except ValueError:
        raise Gemma3nError(f"--custom-slice {spec!r}: widths and skipped layers must be whole numbers") from None
    return make_plan(src, name, widths, skip, {"custom": True})


def select(src: Gemma3nSource, names: str | None = None, custom: list[str] = ()) -> list[SlicePlan]:
    """--slices: 'all' (default) or a comma list of catalog names; plus --custom-slice specs."""
    catalog = default_catalog(src)
    by_name = {p.name.lower(): p for p in catalog}
    plans = []
    if not names or names == "all":
        plans = list(catalog) if not custom or not names else []
    else:
        for item in filter(None, (s.strip() for s in names.split(","))):
            if item.lower() not in by_name:
                raise Gemma3nError(f"--slices: unknown slice {item!r} (this checkpoint offers: "
                                   f"{', '.join(p.name for p in catalog)})")
            plans.append(by_name[item.lower()])
    plans += [parse_custom(src, spec) for spec in custom]
    seen = [p.name.lower() for p in plans]
    if len(set(seen)) != len(seen):
        raise Gemma3nError("--slices/--custom-slice: a slice name is used twice")
    return plans
