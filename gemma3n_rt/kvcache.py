"""The KV cache of one slice: 20 caches for Gemma 3n (KV-shared layers read another layer's cache).

Each cache is a preallocated buffer [capacity, kv_heads, head_dim] in sequence-major order, so
the filled prefix is a contiguous view handed to the decoder without a copy. Full caches hold the
whole context; sliding caches hold the last `window - 1` positions plus room for one chunk, and
slide back only when that room runs out.

`keys` records what each cached position is (a token id, or a media block's digest and index), so
a new prompt that shares a prefix with it reuses that prefix (`truncate`) instead of recomputing.
"""
from __future__ import annotations

import mmap

import numpy as np

from .config import FULL, CacheSpec

DTYPES = {"fp16": np.float16, "fp32": np.float32}   # the manifest's quantization.kv_cache (config.KV_CACHES)


def lazy_zeros(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """Zeros on pages mapped for this array alone, committed only as positions are written.
    np.zeros is not always lazy: once onnxruntime has freed its large load-time buffers, glibc serves
    allocations of up to 32 MiB from recycled heap memory and clears them whole. E2B at 4096
    positions held 178-238 MiB of RssAnon right after load with np.zeros, 128-132 with these."""
    count, dtype = int(np.prod(shape)), np.dtype(dtype)
    # private: a shared anonymous map (mmap's default) would be shmem, not RssAnon
    pages = mmap.mmap(-1, max(dtype.itemsize * count, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return np.frombuffer(pages, dtype, count).reshape(shape)


class KVCache:
    def __init__(self, caches: tuple[CacheSpec, ...], kv_heads: int, head_dim: int, context: int,
                 window: int, chunk: int, dtype=np.float32):
        self.specs = caches
        self.context, self.keep = context, window - 1
        self.capacity = [context if c.type == FULL else min(context, self.keep + chunk) for c in caches]
        self.keys = [lazy_zeros((cap, kv_heads, head_dim), dtype) for cap in self.capacity]
        self.values = [lazy_zeros((cap, kv_heads, head_dim), dtype) for cap in self.capacity]
        self.length = [0] * len(caches)
        self.held: list = []   # per position seen so far, what it is; len(held) is the next position

    @property
    def position(self) -> int:
        return len(self.held)

    def feeds(self) -> dict[str, np.ndarray]:
        """The cached positions each cache's layers can still see: all of a full cache, the last
        `window - 1` of a sliding one (the first new position's window; a sliding buffer holds up to
        a chunk more until it slides back). The graph takes the positions fed as the ones just
        before the new, so a shorter view needs no other input."""
        out = {}
        for c, n in enumerate(self.length):
            start = 0 if self.specs[c].type == FULL else max(0, n - self.keep)
            out[f"past_key.{c}"] = self.keys[c][start:n]
            out[f"past_value.{c}"] = self.values[c][start:n]
        return out

    def append(self, outputs: dict[str, np.ndarray], keys: list) -> None:
        """Store the new K/V (named new_key.{c} / new_value.{c}) of the positions `keys`."""
        count = len(keys)
        for c, cap in enumerate(self.capacity):
            n = self.length[c]
            if n + count > cap:   # sliding cache full: keep the last window-1 positions, drop the rest
                keep = min(n, self.keep)
                for buf in (self.keys[c], self.values[c]):
                    buf[:keep] = buf[n - keep:n]
                n = keep
            self.keys[c][n:n + count] = outputs[f"new_key.{c}"]
            self.values[c][n:n + count] = outputs[f"new_value.{c}"]
            self.length[c] = n + count
        self.held += keys

    def truncate(self, position: int) -> bool:
        """Forget the positions from `position` on. False (and nothing changed) when a sliding
        cache has already dropped positions the shorter prefix would still need."""
        drop = self.position - position
        if drop < 0:
            raise ValueError(f"cannot truncate {self.position} positions to {position}")
        new_lengths = [n - drop if self.specs[c].type == FULL or n - drop >= min(position, self.keep) else None
                       for c, n in enumerate(self.length)]
        if any(n is None or n < 0 for n in new_lengths):
            return False
        self.length = new_lengths
        del self.held[position:]
        return True

    def reset(self) -> None:
        self.length = [0] * len(self.specs)
        self.held = []
