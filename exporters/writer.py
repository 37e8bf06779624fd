"""Writing a bundle's files: the shared weights store, decoder graphs and row tables.

Everything is streamed: one weight tensor, or one chunk of table rows, in memory at a time.
"""
from __future__ import annotations

import json
import os
import struct

import numpy as np
import onnx
from onnx import TensorProto

from gemma3n_rt.safetensors_file import DTYPE_NAMES
from .checkpoint import Lazy
from .onnx_graph import Graph

PAGE = 4096


class WeightStore:
    """One external-data file that every decoder graph of the bundle points into.

    A tensor is written once, however many graphs use it; large tensors start on a page boundary
    so that onnxruntime can map them."""

    def __init__(self, path: str):
        self.path = path
        self.file = open(path, "wb")
        self.entries: dict[str, tuple[int, int, np.dtype, tuple]] = {}

    def add(self, name: str, lazy: Lazy) -> tuple[int, int, np.dtype, tuple]:
        if name in self.entries:
            return self.entries[name]
        arr = np.ascontiguousarray(lazy.load())
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        if tuple(arr.shape) != tuple(lazy.shape):
            raise AssertionError(f"{name}: produced shape {arr.shape}, declared {lazy.shape}")
        align = PAGE if arr.nbytes >= 16 * PAGE else 64
        offset = -(-self.file.tell() // align) * align
        self.file.seek(offset)
        self.file.write(memoryview(arr).cast("B"))
        self.entries[name] = (offset, arr.nbytes, arr.dtype, arr.shape)
        return self.entries[name]

    def close(self) -> None:
        self.file.close()


ONNX_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.uint8): TensorProto.UINT8,
              np.dtype(np.int8): TensorProto.INT8, np.dtype(np.int64): TensorProto.INT64}


def write_graph(graph: Graph, onnx_path: str, store: WeightStore, progress=None,
                sizes: dict[str, int] | None = None) -> int:
    """Write the graph file, its weights going to `store`. Returns the bytes of weights it uses;
    `sizes`, if given, gets each initializer's bytes."""
    location = os.path.relpath(store.path, os.path.dirname(onnx_path))
    initializers, spans = [], []
    for name, ref in graph.weights.items():
        offset, length, dtype, shape = store.add(ref.key, ref.lazy)
        if ref.shape is not None:   # the same bytes, another shape
            if int(np.prod(ref.shape)) != int(np.prod(shape)):
                raise AssertionError(f"{name}: shape {ref.shape} is not a view of {ref.key} {shape}")
            shape = ref.shape
        if ref.rows is not None:   # a view: a range of rows is a range of bytes
            a, b = ref.rows
            row_bytes = length // shape[0]
            offset, length, shape = offset + a * row_bytes, (b - a) * row_bytes, (b - a,) + tuple(shape[1:])
        tensor = TensorProto(name=name, data_type=ONNX_TYPES[dtype], dims=list(shape))
        tensor.data_location = TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
            tensor.external_data.add(key=k, value=v)
        initializers.append(tensor)
        spans.append((offset, offset + length))
        if sizes is not None:
            sizes[name] = length
        if progress is not None:
            progress.update(1)
    onnx.save_model(graph.make_model(initializers), onnx_path)
    return _covered(spans)


def _covered(spans: list[tuple[int, int]]) -> int:
    """Bytes covered by the [start, end) spans: two views of the same bytes count once."""
    total, end = 0, 0
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def write_row_table(path: str, source: Lazy, groups: int, dtype: str, chunk_rows: int = 4096, progress=None) -> None:
    """Write source [rows, groups*width] as a row table (FORMAT.md): int8 with a scale per
    (row, group), or float16/float32. Rows are read and written `chunk_rows` at a time."""
    rows, cols = source.shape
    width = cols // groups
    vdtype = {"int8": np.int8, "fp16": np.float16, "fp32": np.float32}[dtype]
    values_nbytes = rows * cols * np.dtype(vdtype).itemsize
    header = {"values": {"dtype": DTYPE_NAMES[np.dtype(vdtype)], "shape": [rows, groups, width],
                         "data_offsets": [0, values_nbytes]},
              "__metadata__": {"format": "gemma3n-rt-rowtable", "version": "1"}}
    if dtype == "int8":
        header["scales"] = {"dtype": "F32", "shape": [rows, groups],
                            "data_offsets": [values_nbytes, values_nbytes + rows * groups * 4]}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-(8 + len(blob)) % PAGE)   # data starts on a page boundary
    scales = np.empty((rows, groups), np.float32) if dtype == "int8" else None
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for a in range(0, rows, chunk_rows):
            b = min(rows, a + chunk_rows)
            x = source.rows(a, b).reshape(b - a, groups, width)
            if dtype == "int8":
                s = np.abs(x).max(axis=2) / 127.0
                s[s == 0] = 1.0
                scales[a:b] = s
                x = np.rint(x / s[..., None])
            f.write(np.ascontiguousarray(x, dtype=vdtype).tobytes())
            if progress is not None:
                progress.update(b - a)
        if scales is not None:
            f.write(scales.tobytes())

