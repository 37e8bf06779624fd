"""The text decoder of one slice: the ONNX Runtime session and its KV cache.

`forward(embeds, per_layer_tokens, keys)` runs one chunk of positions and returns the logits of its
last one. Prompts are fed in chunks of at most `chunk` positions (generate.prefill), so no [T, T]
score or [T, vocab] logit tensor is ever made for a whole long prompt.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from .bundle import Bundle
from .config import SliceSpec
from .errors import Gemma3nError
from .head import HeadRescore
from .kvcache import DTYPES, KVCache
from .planner import ledger, memory_limit
from .residency import lock, touched_mappings
from .rowtable import RowTable
from .sessions import create_session, prepacked_dir

DEFAULT_CHUNK = 256
# what a process with locked weights keeps free for the rest: code pages, row reads, the tokenizer
LOCK_RESERVE = 64 << 20
ONNX_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}


class TextDecoder:
    def __init__(self, bundle: Bundle, spec: SliceSpec, context: int, threads: int | None = None,
                 chunk: int = DEFAULT_CHUNK, lock_weights: bool = False):
        cfg = bundle.text
        if not 1 <= context <= cfg.max_position_embeddings:
            raise Gemma3nError(f"context must be between 1 and {cfg.max_position_embeddings}, got {context}")
        self.bundle, self.spec, self.cfg, self.context, self.chunk, self.threads = bundle, spec, cfg, context, chunk, threads
        self.session = create_session(bundle.file(spec.graph), threads, prepacked=True)
        # a prompt chunk's activations go back to the system after its run instead of staying in
        # onnxruntime's arena for the one-token steps that follow (E2B after filling 1024 positions:
        # RssAnon 291 MiB against 448)
        self.chunk_run = ort.RunOptions()
        self.chunk_run.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.cache = KVCache(spec.caches, cfg.num_kv_heads, cfg.head_dim, context, cfg.sliding_window, chunk,
                             DTYPES[bundle.quant.kv_cache])
        k = bundle.quant.head_rescore
        if k and (not isinstance(k, int) or k < 0 or "hidden" not in self.outputs):
            raise Gemma3nError(f"{bundle.file(spec.graph)}: the manifest asks to recompute the head's top {k!r} "
                               "logits, but the graph has no 'hidden' output (or that is not a count)")
        self.rescore = HeadRescore(RowTable(bundle.file(bundle.tables.embed)), k, cfg.final_logit_softcapping) if k else None
        self.lock_weights = lock_weights
        self.locked_bytes = self._lock_decode_weights() if lock_weights else 0

    def _lock_decode_weights(self) -> int:
        """Lock in memory the prepacked weights one decode step reads (residency.py), after checking
        that they and the rest of the slice fit the process's memory (a cgroup's limit, else the RAM):
        locked pages past the limit would leave the process thrashing, neither running nor killed."""
        graph = self.bundle.file(self.spec.graph)
        touched = touched_mappings(self._scratch_step, prepacked_dir(graph))
        if not touched:
            raise Gemma3nError(f"{graph}: no prepacked copy of its weights is mapped (GEMMA3N_PREPACKED=0, a graph "
                               "under 64 MiB, or a folder that can't be written), so there is nothing to lock")
        total = sum(m.size for m in touched)
        rest = ledger(self.cfg, self.spec, self.context, self.chunk, self.bundle.quant.decoder, mapped=True,
                      kv_cache=self.bundle.quant.kv_cache).anon + LOCK_RESERVE
        limit = memory_limit()
        if limit is not None and total + rest > limit:
            raise Gemma3nError(f"locking {self.spec.name}'s decode weights ({total / 2**30:.2f} GiB) would not leave "
                               f"room for the rest at context {self.context} ({rest / 2**30:.2f} GiB) within this "
                               f"process's {limit / 2**30:.2f} GiB (its memory cgroup's limit, or the RAM); "
                               "run without locking, or with a smaller context or slice")
        return lock(touched)

    def _scratch_step(self) -> None:
        """One decode step at position 0, before any token, on random activations (zeros would leave
        no feature of a sparse FFN layer active, and its rows unread); its results are dropped."""
        feeds, rng = self.cache.feeds(), np.random.default_rng(0)
        for i in self.session.get_inputs():
            if i.name not in feeds:
                shape, dtype = [d if isinstance(d, int) else 1 for d in i.shape], ONNX_DTYPES[i.type]
                feeds[i.name] = np.zeros(shape, dtype) if dtype == np.int64 else rng.standard_normal(shape).astype(dtype)
        self.session.run(self.outputs, feeds)

    def close(self) -> None:
        """Release the session (its resident weights) now rather than at garbage collection."""
        self.session = None

    @property
    def position(self) -> int:
        return self.cache.position

    def reset(self) -> None:
        self.cache.reset()

    def check_fits(self, total: int) -> None:
        """`total` positions (cached + new) must fit the context."""
        if total > self.context:
            raise Gemma3nError(f"prompt too long: {total} tokens do not fit the context of "
                               f"{self.context} (raise it with context=/--context, up to {self.cfg.max_position_embeddings})")

    def forward(self, embeds: np.ndarray, per_layer_tokens: np.ndarray | None, keys: list) -> np.ndarray:
        """Run positions after what the cache holds (at most `chunk`); logits of the last one.
        `keys` say what each position is (KVCache.keys), for reusing a cached prefix."""
        t = len(embeds)
        if not 1 <= t <= self.chunk or len(keys) != t:
            raise ValueError(f"forward takes 1..{self.chunk} positions with one key each, got {t} and {len(keys)}")
        self.check_fits(self.cache.position + t)
        feeds = {"inputs_embeds": embeds,
                 "positions": np.arange(self.cache.position, self.cache.position + t, dtype=np.int64),
                 **self.cache.feeds()}
        if per_layer_tokens is not None:
            feeds["per_layer_tokens"] = per_layer_tokens
        results = dict(zip(self.outputs, self.session.run(self.outputs, feeds, self.chunk_run if t > 1 else None)))
        self.cache.append(results, keys)
        if self.rescore is not None:
            return self.rescore(results["logits"], results["hidden"])
        return results["logits"]
