"""The embedding step: a prepared prompt -> the decoder's `inputs_embeds` and `per_layer_tokens`.

For each position (gemma3n-spec.md §1.3, §5):
- text ids: the token-embedding row x embed_scale;
- vision / audio ids (<end_of_image>, placeholders): the tower's hard embedding (unit RMS, no scale),
  from a small row table opened only when such an id first appears;
- soft-token positions: the encoder's soft embeddings, in order;
- per-layer tokens: the PLE row of the id, or row 0 for ids past the PLE table (every multimodal id).
The decoder graph computes the PLE projection part from the merged embeddings itself.
"""
from __future__ import annotations

import numpy as np

from .bundle import Bundle
from .errors import Gemma3nError
from .prompt import PreparedPrompt
from .rowtable import RowTable


class Embedder:
    def __init__(self, bundle: Bundle):
        cfg = bundle.text
        self.bundle, self.cfg = bundle, cfg
        self.embed = RowTable(bundle.file(bundle.tables.embed))
        # Gemma 3n has per-layer embeddings; Gemma 3 bundles have no PLE table
        self.ple = RowTable(bundle.file(bundle.tables.ple)) if bundle.tables.ple else None
        if self.embed.num_rows != cfg.vocab_size or (self.ple is not None and self.ple.groups != cfg.num_layers):
            raise Gemma3nError(f"{bundle.path}: row tables do not match the manifest's text_config")
        # (first id, count, table path) of each tower's hard embeddings; tables open on first use
        self.hard_ranges = [(t.vocab_offset, t.vocab_size, t.hard_embeddings) for t in (bundle.vision, bundle.audio) if t]
        self._hard: dict[str, RowTable] = {}

    def _hard_table(self, rel: str) -> RowTable:
        if rel not in self._hard:
            table = RowTable(self.bundle.file(rel))
            if table.width != self.cfg.hidden_size:
                raise Gemma3nError(f"{table.path}: rows of width {table.width}, the model's hidden size is {self.cfg.hidden_size}")
            self._hard[rel] = table
        return self._hard[rel]

    def __call__(self, prompt: PreparedPrompt, start: int, stop: int, layers) -> tuple[np.ndarray, np.ndarray | None]:
        """Positions [start, stop) of the prompt: inputs_embeds [T, D] and per_layer_tokens
        [T, len(layers), P] (None for models without PLE)."""
        cfg = self.cfg
        ids = np.asarray(prompt.ids[start:stop], dtype=np.int64)
        if ids.size == 0:
            raise Gemma3nError("empty prompt")
        if ids.min() < 0 or ids.max() >= cfg.vocab_size:
            bad = int(ids.min() if ids.min() < 0 else ids.max())
            raise Gemma3nError(f"token id {bad} out of range [0, {cfg.vocab_size})")
        text = np.ones(len(ids), bool)
        embeds = np.empty((len(ids), cfg.hidden_size), np.float32)
        for first, count, rel in self.hard_ranges:
            sel = (ids >= first) & (ids < first + count)
            if sel.any():
                embeds[sel] = self._hard_table(rel).gather(ids[sel] - first)[:, 0]
                text &= ~sel
        if text.any():
            embeds[text] = self.embed.gather(ids[text])[:, 0] * np.float32(cfg.embed_scale)
        for first, media in prompt.media:      # soft tokens overwrite their positions, in order
            a, b = max(first, start), min(first + len(media.embeds), stop)
            if a < b:
                embeds[a - start:b - start] = media.embeds[a - first:b - first]
        if self.ple is None:
            return embeds, None
        ple_ids = np.where(ids < cfg.vocab_size_per_layer_input, ids, 0)
        return embeds, self.ple.gather(ple_ids, layers) * np.float32(cfg.per_layer_embed_scale)
