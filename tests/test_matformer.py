"""MatFormer: slices of a tiny E4B-structured checkpoint against the reference model sliced the
MatFormer Lab way; no copies in the weights store; the planner and switching slices."""
import json
import os

import numpy as np
import onnx
import pytest
from transformers import Gemma3nForCausalLM

import gemma3n_rt
from exporters.export import export
from exporters.matformer import published_configs
from gemma3n_rt.planner import choose_slice, ledger
from hf_reference import reference_greedy, reference_logits, reference_model, save_checkpoint, tiny_text_config

FULL_WIDTH = 128          # E4B's 16384; the published 8192 becomes 64
SLICES = ["E2B", "E2.54B-layer", "E3.18B-layer"]
# 35 random layers at the default scales are so sensitive that transformers in float32 differs from
# itself in float64 by 1e-4 (measured); these scales keep float32 rounding near 5e-6.


def e4b_config():
    return tiny_text_config(num_layers=35, num_kv_shared_layers=15, widths=[FULL_WIDTH] * 35, sparse_layers=10,
                            sliding_window=8)


@pytest.fixture(scope="module")
def e4b(tmp_path_factory, demo_tokenizer_path):
    ref = reference_model(e4b_config(), seed=11, embed_std=1.0, gain=0.25, altup_std=0.05)
    ckpt = tmp_path_factory.mktemp("e4b_ckpt")
    save_checkpoint(ref, str(ckpt), str(demo_tokenizer_path))
    bundle = tmp_path_factory.mktemp("e4b") / "bundle"
    export(str(ckpt), str(bundle), quant="fp32", tables="fp32", show_progress=False, slices="E4B," + ",".join(SLICES))
    return ref, ckpt, bundle


def lab_slice(ref: Gemma3nForCausalLM, widths: list[int], skip: list[int]) -> Gemma3nForCausalLM:
    """The MatFormer Lab recipe: drop and renumber layers, cut FFN rows/columns, slice the PLE
    table and projection, update the config (layer types kept from the original indices)."""
    cfg = ref.config
    kept = [l for l in range(cfg.num_hidden_layers) if l not in skip]
    P = cfg.hidden_size_per_layer_input
    new_cfg = tiny_text_config(
        num_layers=len(kept), widths=[widths[i] for i in range(len(kept))],
        num_kv_shared_layers=cfg.num_kv_shared_layers - sum(1 for l in skip if l >= 20),
        sparse_layers=10 - sum(1 for l in skip if l <= 9), sliding_window=cfg.sliding_window,
        layer_types=[cfg.layer_types[l] for l in kept])
    old = ref.model.state_dict()
    new = {}
    for name, t in old.items():
        if name.startswith("layers."):
            _, i, rest = name.split(".", 2)
            if int(i) not in kept:
                continue
            j = kept.index(int(i))
            w = widths[j]
            if rest in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
                t = t[:w]
            elif rest == "mlp.down_proj.weight":
                t = t[:, :w]
            new[f"layers.{j}.{rest}"] = t
        elif name == "embed_tokens_per_layer.weight":
            new[name] = t.view(t.shape[0], cfg.num_hidden_layers, P)[:, kept].reshape(t.shape[0], -1)
        elif name == "per_layer_model_projection.weight":
            new[name] = t.view(cfg.num_hidden_layers, P, -1)[kept].reshape(len(kept) * P, -1)
        else:
            new[name] = t
    model = Gemma3nForCausalLM(new_cfg).eval().float()
    missing, unexpected = model.model.load_state_dict(new, strict=False)
    assert not unexpected and all("k_proj" in m or "v_proj" in m or "k_norm" in m for m in missing), missing
    return model


def published(name):
    row = next(r for r in published_configs() if r["name"] == name)
    return [w * FULL_WIDTH // 16384 for w in row["widths"]], row["skip"]


@pytest.mark.parametrize("name", SLICES)
def test_slice_matches_lab_sliced_reference(e4b, name):
    ref, _, bundle = e4b
    widths, skip = published(name)
    sliced = lab_slice(ref, widths, skip)
    model = gemma3n_rt.load(str(bundle), effective=name, context=128, chunk=16)
    rng = np.random.default_rng(4)
    ids = [2] + rng.integers(3, 2048, 29).tolist()
    ours, theirs = model.next_token_logits(ids), reference_logits(sliced, ids)
    assert np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)) < 1e-4
    assert model.generate_ids(ids, 16, stop_ids=(), temperature=0) == reference_greedy(sliced, ids, 16)
    spec = model.decoder.spec
    assert len(spec.layers) == 35 - len(skip) and list(spec.ffn_widths) == [w for w in widths][: len(spec.layers)]
    assert len(spec.caches) == 20            # KV sharing follows the slice: still 20 caches


def external_ranges(graph_path):
    model = onnx.load(graph_path, load_external_data=False)
    out = {}
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            kv = {e.key: e.value for e in t.external_data}
            out[t.name] = (int(kv["offset"]), int(kv["offset"]) + int(kv["length"]))
    return out


def test_e2b_reads_no_byte_of_second_halves_or_skipped_layers(e4b):
    _, _, bundle = e4b
    full = external_ranges(str(bundle / "text/decoder.E4B.onnx"))
    e2b = external_ranges(str(bundle / "text/decoder.E2B.onnx"))
    forbidden = []
    for name, (a, b) in full.items():
        layer = int(name.split(".")[1]) if name.startswith("layers.") else None
        if layer is not None and 20 <= layer <= 24:
            forbidden.append((name, a, b))
        elif name.endswith(("gate_proj", "up_proj")):            # rows [64, 128) are the second half
            forbidden.append((name, (a + b) // 2, b))
        elif f"down_proj.{FULL_WIDTH // 2}:{FULL_WIDTH}" in name:
            forbidden.append((name, a, b))
        elif name.startswith("per_layer_model_projection"):       # rows of layers 20-24
            row = (b - a) // (35 * 16)
            forbidden.append((name, a + 20 * 16 * row, a + 25 * 16 * row))
    assert len(forbidden) > 5 * 20
    for name, (a, b) in e2b.items():
        for fname, fa, fb in forbidden:
            assert b <= fa or a >= fb, f"E2B's {name} reads bytes of {fname}"


def test_catalog_costs_no_weight_copies(e4b, tmp_path):
    _, ckpt, bundle = e4b
    alone = tmp_path / "alone"
    export(str(ckpt), str(alone), quant="fp32", tables="fp32", show_progress=False, slices="E4B")
    assert (bundle / "text/weights.bin").stat().st_size == (alone / "text/weights.bin").stat().st_size


def test_use_slice_switches_without_reloading(e4b):
    ref, _, bundle = e4b
    ids = [2, 40, 41, 42, 43]
    model = gemma3n_rt.load(str(bundle), effective="4b", context=64)
    embed = model.embedder
    model.use_slice("2b")
    assert model.slice == "E2B" and model.embedder is embed
    direct = gemma3n_rt.load(str(bundle), effective="E2B", context=64)
    assert np.allclose(model.next_token_logits(ids), direct.next_token_logits(ids), rtol=0, atol=1e-6)


def test_planner_picks_the_largest_slice_that_fits(e4b):
    _, _, bundle = e4b
    b = gemma3n_rt.model.Bundle.open(str(bundle))
    totals = sorted((ledger(b.text, s, 1024, 256, "fp32").total, s.effective_params, s.name) for s in b.slices)
    by_params = sorted(b.slices, key=lambda s: s.effective_params)
    budget = ledger(b.text, by_params[1], 1024, 256, "fp32").total + 1
    chosen = choose_slice(b, None, budget, 1024, 256)
    fitting = [s for s in b.slices if ledger(b.text, s, 1024, 256, "fp32").total <= budget]
    assert chosen == max(fitting, key=lambda s: s.effective_params)
    with pytest.raises(gemma3n_rt.Gemma3nError, match=f"smallest slice, {by_params[0].name}, needs"):
        choose_slice(b, None, totals[0][0] - 1, 1024, 256)


def test_catalog_entries(e4b):
    _, _, bundle = e4b
    manifest = json.loads((bundle / "manifest.json").read_text())
    names = [s["name"] for s in manifest["slices"]]
    assert names == ["E4B"] + SLICES
    e2b = manifest["slices"][1]
    assert e2b["published_mmlu"] == 50.9 and e2b["layers"] == [l for l in range(35) if not 20 <= l <= 24]
    assert all(s["ledger_at_1k_context"]["total"] > s["weight_bytes"] for s in manifest["slices"])
    assert manifest["slices"][0]["effective_params"] > e2b["effective_params"]


@pytest.mark.parametrize("kw,message", [
    (dict(slices="E9B"), "unknown slice 'E9B'"),
    (dict(custom=["bad=128*35@18"]), r"layers \[18, 19\] store the shared K/V"),
    (dict(custom=["wide=256*35"]), "FFN width 256 is not a prefix of the checkpoint's 128"),
    (dict(custom=["short=64*20"]), "20 FFN widths given for 35 kept layers"),
    (dict(custom=["junk=abc"]), "whole numbers"),
])
def test_bad_slices_are_clear_errors(e4b, tmp_path, kw, message):
    _, ckpt, _ = e4b
    with pytest.raises(gemma3n_rt.Gemma3nError, match=message):
        export(str(ckpt), str(tmp_path / "out"), quant="fp32", tables="fp32", show_progress=False, **kw)
    assert not os.path.exists(tmp_path / "out")


def test_custom_slice_matches_reference(e4b, tmp_path):
    ref, ckpt, _ = e4b
    out = tmp_path / "custom"
    export(str(ckpt), str(out), quant="fp32", tables="fp32", show_progress=False, slices="E4B",
           custom=["mine=32*10,128*10,64*15@21-23"])
    widths = [32] * 10 + [128] * 10 + [64] * 15
    skip = [21, 22, 23]
    sliced = lab_slice(ref, [w for l, w in enumerate(widths) if l not in skip], skip)
    model = gemma3n_rt.load(str(out), effective="mine", context=64)
    ids = [2] + list(range(100, 120))
    ours, theirs = model.next_token_logits(ids), reference_logits(sliced, ids)
    assert np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)) < 1e-4
