"""Read-only, memory-mapped access to a safetensors file, one tensor at a time.

The standard safetensors layout: an 8-byte little-endian header length, a JSON header naming each
tensor's dtype, shape and byte range, then the data. Tensors are returned as numpy memmaps, so
nothing is read until it is touched and tables of more than 2^31 elements are fine.
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass

import numpy as np

from .errors import Gemma3nError

# bf16 has no numpy dtype: it is mapped as uint16 and widened by the caller (see bf16_to_f32).
DTYPES = {
    "F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64,
    "I8": np.int8, "U8": np.uint8, "I16": np.int16, "I32": np.int32, "I64": np.int64, "BOOL": np.bool_,
}
DTYPE_NAMES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int8): "I8",
               np.dtype(np.uint8): "U8", np.dtype(np.int32): "I32", np.dtype(np.int64): "I64"}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str          # safetensors dtype name, e.g. "BF16"
    shape: tuple[int, ...]
    offset: int         # absolute byte offset of the data in the file
    nbytes: int


class SafetensorsFile:
    def __init__(self, path: str):
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) != 8:
                    raise Gemma3nError(f"{self.path}: not a safetensors file (shorter than 8 bytes)")
                (header_len,) = struct.unpack("<Q", head)
                size = os.fstat(f.fileno()).st_size
                if header_len > min(size - 8, 100 << 20):
                    raise Gemma3nError(f"{self.path}: not a safetensors file (bad header length {header_len})")
                header = json.loads(f.read(header_len))
        except FileNotFoundError:
            raise Gemma3nError(f"{self.path}: file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise Gemma3nError(f"{self.path}: not a safetensors file (header is not JSON)") from None
        if not isinstance(header, dict):
            raise Gemma3nError(f"{self.path}: not a safetensors file (header is not a JSON object)")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict):
            raise Gemma3nError(f"{self.path}: not a safetensors file (__metadata__ is not a JSON object)")
        self.metadata: dict[str, str] = metadata
        data_start = 8 + header_len
        self.tensors: dict[str, TensorInfo] = {}
        for name, spec in header.items():
            self.tensors[name] = self._tensor_info(name, spec, data_start, size)

    def _tensor_info(self, name: str, spec, data_start: int, size: int) -> TensorInfo:
        """One header entry, checked before anything is mapped: the header is untrusted input."""
        def bad(what: str) -> Gemma3nError:
            return Gemma3nError(f"{self.path}: tensor {name} {what}")

        if not isinstance(spec, dict) or not {"dtype", "shape", "data_offsets"} <= spec.keys():
            raise bad("needs dtype, shape and data_offsets in the header")
        dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise bad(f"has unsupported dtype {dtype}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise bad(f"has an invalid shape {shape!r} (expected a list of whole numbers >= 0)")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise bad(f"has invalid data_offsets {offsets!r} (expected [begin, end] with 0 <= begin <= end)")
        begin, end = offsets
        # Python integers: a shape whose product overflows 64 bits can't pass for a small tensor
        expected = math.prod(shape) * np.dtype(DTYPES[dtype]).itemsize
        if expected != end - begin or data_start + end > size:
            raise bad("has an inconsistent byte range (truncated file?)")
        return TensorInfo(name, dtype, tuple(shape), data_start + begin, end - begin)

    def array(self, name: str) -> np.memmap:
        """The tensor as a read-only memmap (bf16 comes back as uint16 bit patterns)."""
        info = self.tensors[name]
        if info.nbytes == 0:
            return np.zeros(info.shape, DTYPES[info.dtype])
        return np.memmap(self.path, dtype=DTYPES[info.dtype], mode="r", offset=info.offset, shape=info.shape)


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """Widen bf16 bit patterns (uint16) to float32 exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)
