"""Row tables: a big matrix read one row per token, straight from a memory-mapped file.

The token embedding and the per-layer embedding (PLE) table are both row tables. A table is a
safetensors file (see FORMAT.md) holding `values` [rows, groups, width] as int8 with `scales`
[rows, groups] (one scale per row and group), or as float16/float32 without scales. Only the
rows that tokens touch are ever paged in: this is what keeps the 2-billion-parameter PLE table
in flash instead of RAM.
"""
from __future__ import annotations

import numpy as np

from .errors import Gemma3nError
from .safetensors_file import SafetensorsFile

VALUE_DTYPES = ("I8", "F16", "F32")


class RowTable:
    def __init__(self, path: str):
        st = SafetensorsFile(path)
        if "values" not in st.tensors:
            raise Gemma3nError(f"{path}: not a row table (no 'values' tensor)")
        info = st.tensors["values"]
        if info.dtype not in VALUE_DTYPES or len(info.shape) != 3:
            raise Gemma3nError(f"{path}: row table 'values' must be I8/F16/F32 of rank 3, got {info.dtype} {info.shape}")
        self.path = path
        self.num_rows, self.groups, self.width = info.shape
        self.values = st.array("values")
        self.scales = None
        if info.dtype == "I8":
            if "scales" not in st.tensors or st.tensors["scales"].shape != info.shape[:2]:
                raise Gemma3nError(f"{path}: int8 row table needs 'scales' of shape {info.shape[:2]}")
            self.scales = st.array("scales")

    @property
    def dtype(self) -> str:
        return "int8" if self.scales is not None else str(self.values.dtype)

    def gather(self, ids, groups=None) -> np.ndarray:
        """Rows `ids` (and optionally only `groups`) dequantized to float32: [len(ids), G, width].

        Sorting and de-duplicating the ids first means each touched page is read once, in order.
        """
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_rows):
            raise Gemma3nError(f"{self.path}: row id out of range [0, {self.num_rows})")
        unique, inverse = np.unique(ids, return_inverse=True)
        sel = slice(None) if groups is None else np.asarray(groups, dtype=np.int64)
        rows = np.asarray(self.values[unique][:, sel], dtype=np.float32)
        if self.scales is not None:
            rows *= np.asarray(self.scales[unique][:, sel], dtype=np.float32)[..., None]
        return rows[inverse.reshape(-1)]
