"""Row tables: a big matrix read one row per token, straight from the file.

The token embedding and the per-layer embedding (PLE) table are both row tables. A table is a
safetensors file (see FORMAT.md) holding `values` [rows, groups, width] as int8 with `scales`
[rows, groups] (one scale per row and group), or as float16/float32 without scales.

Rows are read with pread, a few kilobytes per token, rather than through a memory map: recent
kernels map a whole large folio (up to megabytes of page cache) into the process on each fault,
so a mapped table shows up in RSS far beyond the rows used. With pread, the process holds only
the rows it asked for; the rest of the table stays in flash (or in reclaimable page cache).
"""
from __future__ import annotations

import os

import numpy as np

from .errors import Gemma3nError
from .safetensors_file import DTYPES, SafetensorsFile

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
        self.value_dtype = np.dtype(DTYPES[info.dtype])
        self.row_bytes = self.groups * self.width * self.value_dtype.itemsize
        self.values_offset = info.offset
        self.scales_offset = None
        if info.dtype == "I8":
            scales = st.tensors.get("scales")
            if scales is None or scales.shape != info.shape[:2] or scales.dtype != "F32":
                raise Gemma3nError(f"{path}: int8 row table needs F32 'scales' of shape {list(info.shape[:2])}")
            self.scales_offset = scales.offset
        self.fd = os.open(path, os.O_RDONLY)

    def __del__(self):
        fd = getattr(self, "fd", None)
        if fd is not None:
            os.close(fd)

    @property
    def dtype(self) -> str:
        return "int8" if self.scales_offset is not None else self.value_dtype.name

    def _read(self, offset: int, nbytes: int, dtype, shape) -> np.ndarray:
        data = os.pread(self.fd, nbytes, offset)
        if len(data) != nbytes:
            raise Gemma3nError(f"{self.path}: file ends early (truncated row table)")
        return np.frombuffer(data, dtype).reshape(shape)

    def gather(self, ids, groups=None) -> np.ndarray:
        """Rows `ids` (and optionally only `groups`) dequantized to float32: [len(ids), G, width]."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_rows):
            raise Gemma3nError(f"{self.path}: row id out of range [0, {self.num_rows})")
        unique, inverse = np.unique(ids, return_inverse=True)
        sel = slice(None) if groups is None else np.asarray(groups, dtype=np.int64)
        rows = np.empty((len(unique), self.groups if groups is None else len(sel), self.width), np.float32)
        shape = (self.groups, self.width)
        for i, r in enumerate(unique.tolist()):
            row = self._read(self.values_offset + r * self.row_bytes, self.row_bytes, self.value_dtype, shape)[sel]
            if self.scales_offset is not None:
                scale = self._read(self.scales_offset + r * self.groups * 4, self.groups * 4, np.float32, (self.groups,))
                rows[i] = row * scale[sel][:, None]
            else:
                rows[i] = row
        return rows[inverse.reshape(-1)]
