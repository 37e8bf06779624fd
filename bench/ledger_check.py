"""Measure a slice's resident memory against its ledger, in a fresh process.

    python bench/ledger_check.py BUNDLE SLICE [--context N] [--prompt-tokens N] [--prepacked auto|on|off]

Prints one JSON line: the ledger's parts, total and anonymous part, whether the prepacked weights
were mapped, and the measured growth of RssAnon from before `load`: after load, at its highest
while a prefill of --prompt-tokens and 16 decode steps run (sampled every millisecond: a prompt
chunk's activations are released after its run), and after them. --prepacked on maps a prepacked
copy whatever the bundle's size.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import gemma3n_rt  # noqa: E402
from gemma3n_rt.decoder import DEFAULT_CHUNK  # noqa: E402
from gemma3n_rt.memory import PeakRss, rss  # noqa: E402
from gemma3n_rt import sessions  # noqa: E402
from gemma3n_rt.planner import ledger  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("bundle")
    p.add_argument("slice")
    p.add_argument("--context", type=int, default=2048)
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--prepacked", choices=("auto", "on", "off"), default="auto")
    a = p.parse_args()
    if a.prepacked != "auto":
        os.environ[sessions.PREPACKED_ENV] = "1" if a.prepacked == "on" else "0"
        sessions.MIN_PREPACKED_BYTES = 0
    gc.collect()
    before = rss()
    model = gemma3n_rt.load(a.bundle, effective=a.slice, context=a.context, threads=a.threads)
    mapped = sessions.maps_prepacked(model.bundle.file(model.decoder.spec.graph))
    loaded = rss()
    text = model.bundle.text
    vocab = text.vocab_size_per_layer_input or text.vocab_size      # Gemma 3 has no PLE table
    ids = [2] + np.random.default_rng(0).integers(3, vocab, a.prompt_tokens - 1).tolist()
    highest, done = PeakRss(), threading.Event()

    def sample() -> None:   # onnxruntime releases the GIL while it runs
        while not done.wait(0.001):
            highest.sample()
    highest.sample()
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        model.generate_ids(ids, 16, stop_ids=())
    finally:
        done.set()
        sampler.join()
    after = rss()
    led = ledger(model.bundle.text, model.decoder.spec, a.context, DEFAULT_CHUNK,
                 model.bundle.quant.decoder, mapped, model.bundle.quant.kv_cache)
    print(json.dumps({"slice": a.slice, "context": a.context, "ledger": {"weights": led.weights, "kv": led.kv,
                      "workspace": led.workspace, "total": led.total, "anon": led.anon, "mapped": led.mapped},
                      "rss_anon_after_load": loaded["anon"] - before["anon"],
                      "rss_anon_highest": max(highest.anon, after["anon"]) - before["anon"],
                      "rss_anon_after_generate": after["anon"] - before["anon"],
                      "peak_rss_anon": model.last_stats.peak.anon - before["anon"],
                      "decode_tps": round(model.last_stats.decode_tps, 2),
                      "prefill_tps": round(model.last_stats.prefill_tps, 2)}))


if __name__ == "__main__":
    main()
