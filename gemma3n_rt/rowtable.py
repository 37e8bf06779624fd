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

    def read_into(self, ids: list[int], values: np.ndarray, scales: np.ndarray | None) -> None:
        """Rows `ids` as stored, into values[:len(ids)] ([rows, G, width] of the table's dtype) and,
        for int8, their scales into scales[:len(ids)] ([rows, G] float32). A caller that reads every
        token keeps these arrays: gathering E2B's 64 rescored rows into fresh ones took 0.72-0.85 ms
        and 256 minor page faults, where the 128 preads take 0.09 ms."""
        for into, offset, nbytes in ((values, self.values_offset, self.row_bytes),
                                     (scales, self.scales_offset, self.groups * 4)):
            if into is None or not ids:
                continue
            if not (into.flags.c_contiguous and into.dtype.itemsize * int(np.prod(into.shape[1:])) == nbytes):
                raise ValueError(f"{self.path}: rows are read into a C-contiguous array of rows of {nbytes} bytes")
            out = memoryview(into).cast("B")
            for i, r in enumerate(ids):
                data = os.pread(self.fd, nbytes, offset + r * nbytes)
                if len(data) != nbytes:
                    raise Gemma3nError(f"{self.path}: file ends early (truncated row table)")
                out[i * nbytes:(i + 1) * nbytes] = data

    def gather(self, ids, groups=None) -> np.ndarray:
        """Rows `ids` (and optionally only `groups`) dequantized to float32: [len(ids), G, width]."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_rows):
            raise Gemma3nError(f"{self.path}: row id out of range [0, {self.num_rows})")
        unique, inverse = np.unique(ids, return_inverse=True)
        values = np.empty((len(unique), self.groups, self.width), self.value_dtype)
        scales = np.empty((len(unique), self.groups), np.float32) if self.scales_offset is not None else None
        self.read_into(unique.tolist(), values, scales)
        if groups is not None:
            sel = np.asarray(groups, dtype=np.int64)
            values = values[:, sel]
            scales = None if scales is None else scales[:, sel]
        out = values.astype(np.float32) if scales is None else values * scales[:, :, None]
        return out[inverse.reshape(-1)]
