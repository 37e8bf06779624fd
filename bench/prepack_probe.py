"""Can onnxruntime's prepacked weights be written once and then mapped from a file?

    python -m bench.prepack_probe BUNDLE [--threads 2]

1. write: a session over the slice's graph with `session.save_external_prepacked_constant_initializers`
   and an optimized model file (its initializers, prepacked ones included, in an external file);
2. in fresh processes: load the original graph and the optimized one (optionally with
   `session.prepack.enable_parallel`), run a prompt, and report load time, RssAnon/RssFile and
   whether the logits match. One JSON line per variant.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_optimized(bundle: str, out: str, threads: int) -> float:
    import onnxruntime as ort
    import gemma3n_rt
    from gemma3n_rt.bundle import Bundle
    b = Bundle.open(bundle)
    spec = b.slices[0]
    opts = gemma3n_rt.sessions.session_options(threads)
    opts.optimized_model_filepath = os.path.join(out, "decoder.opt.onnx")
    opts.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
    opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", "decoder.opt.bin")
    opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    t = time.perf_counter()
    ort.InferenceSession(b.file(spec.graph), opts, providers=["CPUExecutionProvider"])
    return time.perf_counter() - t


def rss() -> dict:
    from gemma3n_rt.memory import rss as r
    return r()


def child(bundle: str, variant: str, out: str, threads: int) -> None:
    import gemma3n_rt
    from gemma3n_rt import decoder as dec_mod, sessions
    before = rss()
    if variant != "original":
        opt_path = os.path.join(out, "decoder.opt.onnx")
        base_options = sessions.session_options

        def options(threads_):
            o = base_options(threads_)
            if variant in ("optimized", "optimized+parallel"):
                o.graph_optimization_level = __import__("onnxruntime").GraphOptimizationLevel.ORT_DISABLE_ALL
            if variant.endswith("parallel"):
                o.add_session_config_entry("session.prepack.enable_parallel", "1")
            return o
        sessions.session_options = options
        if variant.startswith("optimized"):
            dec_mod.create_session = lambda path, th=None: sessions.create_session(opt_path, th)
    t = time.perf_counter()
    model = gemma3n_rt.load(bundle, threads=threads, context=1024)
    load_s = time.perf_counter() - t
    loaded = rss()
    ids = [2] + np.random.default_rng(0).integers(3, 200000, 63).tolist()
    logits = model.next_token_logits(ids)
    after = rss()
    np.save(os.path.join(out, f"logits-{variant}.npy"), logits)
    print(json.dumps({"variant": variant, "load_s": round(load_s, 3),
                      "anon_loaded_mib": round((loaded["anon"] - before["anon"]) / 2**20, 1),
                      "file_loaded_mib": round((loaded["file"] - before["file"]) / 2**20, 1),
                      "anon_after_prompt_mib": round((after["anon"] - before["anon"]) / 2**20, 1),
                      "file_after_prompt_mib": round((after["file"] - before["file"]) / 2**20, 1)}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("bundle")
    p.add_argument("--out", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child")
    p.add_argument("--variants", default="original,parallel,optimized,optimized+parallel")
    a = p.parse_args()
    out = a.out or os.path.join(a.bundle, "..", os.path.basename(a.bundle.rstrip("/")) + "-prepacked")
    if a.child:
        child(a.bundle, a.child, out, a.threads)
        return
    os.makedirs(out, exist_ok=True)
    if not os.path.exists(os.path.join(out, "decoder.opt.onnx")):
        print(f"writing the optimized model: {write_optimized(a.bundle, out, a.threads):.2f} s", file=sys.stderr)
    sizes = {f: os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if not f.endswith(".npy")}
    print(json.dumps({"files": sizes}))
    for rep in range(2):
        for v in a.variants.split(","):
            r = subprocess.run([sys.executable, "-m", "bench.prepack_probe", a.bundle, "--out", out, "--threads",
                                str(a.threads), "--child", v], cwd=ROOT, capture_output=True, text=True)
            print(r.stdout.strip() or f"{v}: failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}", flush=True)
    ref = np.load(os.path.join(out, "logits-original.npy"))
    for v in a.variants.split(","):
        f = os.path.join(out, f"logits-{v}.npy")
        if os.path.exists(f):
            print(f"{v}: max |logits - original| = {float(np.max(np.abs(np.load(f) - ref))):.3g}")


if __name__ == "__main__":
    main()
