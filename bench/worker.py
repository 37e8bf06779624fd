"""One measurement in a fresh process (bench/run.py starts it): load, prefill a prompt, decode
greedily, and print one JSON line of timings. The parent samples this process's RSS meanwhile.

    python -m bench.worker ours BUNDLE --prompt 512 --decode 128 --threads 2 [--ple-in-ram] [--mlock]
    python -m bench.worker llama.cpp FILE.gguf --prompt 512 --decode 128 --threads 2 [--mlock]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

PLE_ROWS = 262144


def prompt_ids(n: int, seed: int = 0) -> list[int]:
    """<bos> and n - 1 random ids of the real vocabulary (ids 3.. below the PLE table's rows)."""
    return [2] + np.random.default_rng(seed).integers(3, PLE_ROWS, n - 1).tolist()


def touched_bytes(step) -> int | None:
    """Memory the process touches while `step()` runs: the kernel's accessed bits are cleared
    (/proc/self/clear_refs), then summed over every mapping (smaps_rollup's Referenced), file-backed
    and anonymous alike: the bytes a decode step really reads, in whatever layout the runtime keeps
    its weights. None (and `step` not run) where the kernel has no such files. (Not
    gemma3n_rt.residency's: the llama.cpp worker must not load onnxruntime, whose memory it measures.)"""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("1")
    except OSError:
        return None
    step()
    with open("/proc/self/smaps_rollup") as f:
        return sum(int(line.split()[1]) * 1024 for line in f if line.startswith("Referenced:"))


def run_ours(path: str, ids: list[int], decode: int, threads: int, context: int, ple_in_ram: bool,
             effective: str | None = None, mlock: bool = False) -> dict:
    import gemma3n_rt
    t0 = time.perf_counter()
    model = gemma3n_rt.load(path, effective=effective, threads=threads, context=context, lock_weights=mlock)
    if ple_in_ram:
        from bench.ram_table import InRamRowTable
        model.embedder.ple = InRamRowTable(model.embedder.ple.path)
    from gemma3n_rt.prompt import PreparedPrompt
    ready = time.perf_counter()
    # greedy through the API's own loop: the first token comes from the prefill's logits
    # (one more step after the timed ones, for touched_bytes)
    tokens = model.generate_tokens(PreparedPrompt(ids), decode + 2, stop_ids=(), temperature=0)
    next(tokens)
    first = time.perf_counter()
    for _ in range(decode):
        next(tokens)
    done = time.perf_counter()
    return {"load_s": ready - t0, "ttft_s": first - ready, "decode_s": done - first, "events": {
        "ready": ready, "first_token": first, "done": done}, "step_touched_bytes": touched_bytes(lambda: next(tokens))}


def run_llama(path: str, ids: list[int], decode: int, threads: int, context: int, mlock: bool = False) -> dict:
    import llama_cpp
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(path, n_ctx=context, n_threads=threads, n_threads_batch=threads, n_batch=512,
                          n_ubatch=512, use_mlock=mlock, verbose=False)
    ready = time.perf_counter()
    vocab = llm.n_vocab()

    def last_logits() -> np.ndarray:     # the batch's only output row (logits_all is off)
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,))
    llm.eval(ids)
    token = int(np.argmax(last_logits()))
    first = time.perf_counter()
    for _ in range(decode):
        llm.eval([token])
        token = int(np.argmax(last_logits()))
    done = time.perf_counter()

    def step():
        llm.eval([token])
        np.argmax(last_logits())
    return {"load_s": ready - t0, "ttft_s": first - ready, "decode_s": done - first, "events": {
        "ready": ready, "first_token": first, "done": done}, "step_touched_bytes": touched_bytes(step)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("runtime", choices=("ours", "llama.cpp"))
    p.add_argument("path")
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--decode", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--context", type=int, default=4096)
    p.add_argument("--ple-in-ram", action="store_true")
    p.add_argument("--mlock", action="store_true", help="lock the weights in memory (ours: lock_weights; llama.cpp: use_mlock)")
    p.add_argument("--effective", help="ours: this slice, whatever the free memory (the planner would refuse under --cap)")
    a = p.parse_args(argv)
    start = time.perf_counter()
    ids = prompt_ids(a.prompt)
    if a.runtime == "ours":
        r = run_ours(a.path, ids, a.decode, a.threads, a.context, a.ple_in_ram, a.effective, a.mlock)
    else:
        r = run_llama(a.path, ids, a.decode, a.threads, a.context, a.mlock)
    r["events"] = {k: v - start for k, v in r["events"].items()}
    r.update(prompt=a.prompt, decode=a.decode, prefill_tps=a.prompt / r["ttft_s"], decode_tps=a.decode / r["decode_s"])
    print("RESULT " + json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
