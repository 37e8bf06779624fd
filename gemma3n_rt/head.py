"""The top logits of an int4 LM head, recomputed from the token-embedding row table.

The head is tied to the token embedding, so its rows are the embedding's rows, which the bundle
already holds as a row table (int8 per row by default). An int4 head reads half the bytes of
an int8 one every token; recomputing only the k largest logits from the table's rows (k x 2 KiB
on E2B) gives those back the table's precision, and the tokens that sampling picks are almost
always among them. On the real Gemma 3 270M (bench/quality.py) an int4 head with k = 64 scored
like the int8 head, where the int4 head alone fell well short (README, Benchmarks). A larger k scores
better still, but every recomputed logit is a random row read, from flash when the table is not
in the page cache: k = 256 made E2B's decode step 1.5x slower there.
"""
from __future__ import annotations

import numpy as np

from .rowtable import RowTable
from .sampling import top_k_ids


class HeadRescore:
    def __init__(self, table: RowTable, k: int, softcap: float | None):
        self.table, self.k, self.softcap = table, k, softcap
        # kept across tokens: fresh arrays of this size fault their pages in again every token
        self.values = np.empty((k, table.groups, table.width), table.value_dtype)
        self.scales = np.empty((k, table.groups), np.float32) if table.dtype == "int8" else None
        self.rows = np.empty((k, table.width), np.float32)

    def __call__(self, logits: np.ndarray, hidden: np.ndarray) -> np.ndarray:
        """logits [V] of the int4 head (overwritten: the decoder's own output), hidden [D] the normed
        state it was applied to."""
        top = top_k_ids(logits, self.k)
        n = len(top)
        self.table.read_into(top.tolist(), self.values, self.scales)
        rows = self.rows[:n]
        if self.scales is None:
            rows[...] = self.values[:n, 0]
        else:
            np.multiply(self.values[:n, 0], self.scales[:n, :1], out=rows)
        exact = rows @ hidden.reshape(-1).astype(np.float32)
        if self.softcap:
            exact = np.tanh(exact / np.float32(self.softcap)) * np.float32(self.softcap)
        logits[top] = exact
        return logits
