"""The text decoder of one slice: row-table gathers, the ONNX Runtime session and its KV cache.

`forward(ids)` runs one chunk of tokens and returns the logits of its last position. Prompts are
fed in chunks of at most `chunk` tokens, so no [T, T] score or [T, vocab] logit tensor is ever
made for a whole long prompt.
"""
from __future__ import annotations

import numpy as np

from .bundle import Bundle
from .config import SliceSpec
from .errors import Gemma3nError
from .kvcache import KVCache
from .rowtable import RowTable
from .sessions import create_session

DEFAULT_CHUNK = 256


class TextDecoder:
    def __init__(self, bundle: Bundle, spec: SliceSpec, context: int, threads: int | None = None,
                 chunk: int = DEFAULT_CHUNK, embed: RowTable | None = None, ple: RowTable | None = None):
        cfg = bundle.text
        if not 1 <= context <= cfg.max_position_embeddings:
            raise Gemma3nError(f"context must be between 1 and {cfg.max_position_embeddings}, got {context}")
        self.bundle, self.spec, self.cfg, self.context, self.chunk, self.threads = bundle, spec, cfg, context, chunk, threads
        self.embed = embed or RowTable(bundle.file(bundle.tables.embed))
        # Gemma 3n has per-layer embeddings; Gemma 3 bundles have no PLE table
        self.ple = ple or (RowTable(bundle.file(bundle.tables.ple)) if bundle.tables.ple else None)
        if self.embed.num_rows != cfg.vocab_size or (self.ple is not None and self.ple.groups != cfg.num_layers):
            raise Gemma3nError(f"{bundle.path}: row tables do not match the manifest's text_config")
        self.session = create_session(bundle.file(spec.graph), threads)
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.cache = KVCache(spec.caches, cfg.num_kv_heads, cfg.head_dim, context, cfg.sliding_window, chunk)

    def close(self) -> None:
        """Release the session (its resident weights) now rather than at garbage collection."""
        self.session = None

    @property
    def position(self) -> int:
        return self.cache.position

    def reset(self) -> None:
        self.cache.reset()

    def check_fits(self, total: int) -> None:
        """`total` tokens (cached + new) must fit the context."""
        if total > self.context:
            raise Gemma3nError(f"prompt too long: {total} tokens do not fit the context of "
                               f"{self.context} (raise it with context=/--context, up to {self.cfg.max_position_embeddings})")

    def forward(self, ids) -> np.ndarray:
        """Run the tokens `ids` (at most `chunk`) after what the cache holds; logits of the last one."""
        ids = np.asarray(ids, dtype=np.int64)
        t = len(ids)
        if not 1 <= t <= self.chunk:
            raise ValueError(f"forward takes 1..{self.chunk} tokens, got {t}")
        if ids.min() < 0 or ids.max() >= self.cfg.vocab_size:
            raise Gemma3nError(f"token id out of range [0, {self.cfg.vocab_size}): {int(ids.max() if ids.max() >= 0 else ids.min())}")
        self.check_fits(self.cache.position + t)
        cfg = self.cfg
        embeds = self.embed.gather(ids)[:, 0] * np.float32(cfg.embed_scale)
        feeds = {"inputs_embeds": embeds,
                 "positions": np.arange(self.cache.position, self.cache.position + t, dtype=np.int64),
                 **self.cache.feeds()}
        if self.ple is not None:
            ple_ids = np.where(ids < cfg.vocab_size_per_layer_input, ids, 0)   # multimodal ids use PLE row 0
            feeds["per_layer_tokens"] = self.ple.gather(ple_ids, self.spec.layers) * np.float32(cfg.per_layer_embed_scale)
        results = dict(zip(self.outputs, self.session.run(self.outputs, feeds)))
        self.cache.append(results, t)
        return results["logits"]

    def prefill(self, ids) -> np.ndarray:
        """Feed a prompt chunk by chunk; logits of its last token."""
        ids = list(ids)
        if not ids:
            raise Gemma3nError("empty prompt")
        self.check_fits(self.cache.position + len(ids))
        logits = None
        for a in range(0, len(ids), self.chunk):
            logits = self.forward(ids[a:a + self.chunk])
        return logits
