"""Switch a loaded model between MatFormer slices and report time and memory.

    python bench/switch_slice.py BUNDLE FROM TO
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gemma3n_rt  # noqa: E402
from gemma3n_rt.memory import rss  # noqa: E402

MiB = 1 << 20


def show(label: str) -> None:
    r = rss()
    print(f"{label:<34} RssAnon {r['anon'] / MiB:8.1f} MiB   RssFile {r['file'] / MiB:8.1f} MiB")


def main(bundle: str, first: str, second: str) -> None:
    ids = [2] + list(range(1000, 1063))
    t = time.perf_counter()
    model = gemma3n_rt.load(bundle, effective=first, context=2048)
    print(f"load {first}: {time.perf_counter() - t:.2f} s")
    model.generate_ids(ids, 8, stop_ids=())
    show(f"{first} loaded, after a generation")
    for target in (second, first):
        t = time.perf_counter()
        model.use_slice(target)
        print(f"use_slice({target!r}): {time.perf_counter() - t:.2f} s")
        model.generate_ids(ids, 8, stop_ids=())
        show(f"{target} after a generation")


if __name__ == "__main__":
    main(*sys.argv[1:4])
