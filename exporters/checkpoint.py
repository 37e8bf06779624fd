"""A Hugging Face checkpoint directory, read lazily: one tensor at a time, never the whole model.

`Checkpoint.take(name, shape)` hands out each tensor once, asserting its shape; `finish()` then
checks that every tensor was either taken or explicitly ignored, so a misnamed or forgotten
weight is an error, not a silently random model.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from gemma3n_rt.errors import Gemma3nError
from gemma3n_rt.safetensors_file import SafetensorsFile, bf16_to_f32


@dataclass(frozen=True)
class Lazy:
    """A tensor not yet read: its shape, and how to produce it as float32 when needed."""
    name: str
    shape: tuple[int, ...]
    load: Callable[[], np.ndarray]
    load_rows: Callable[[int, int], np.ndarray] | None = None   # rows [a, b) without reading the rest

    def map(self, fn: Callable[[np.ndarray], np.ndarray], shape: tuple[int, ...], name: str | None = None) -> "Lazy":
        return Lazy(name or self.name, tuple(shape), lambda: fn(self.load()))

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.load_rows(start, stop) if self.load_rows else self.load()[start:stop]


def to_f32(a: np.ndarray, dtype: str) -> np.ndarray:
    return bf16_to_f32(np.asarray(a)) if dtype == "BF16" else np.asarray(a, dtype=np.float32)


class TensorSource:
    """Hands out a checkpoint's tensors by Hugging Face name, each once, with its shape checked;
    `finish()` then checks that every tensor was either taken or explicitly ignored."""
    dir: str
    config: dict

    def __init__(self):
        self.used: set[str] = set()
        self.ignored: set[str] = set()

    def names(self) -> list[str]:
        raise NotImplementedError

    def shape(self, name: str) -> tuple[int, ...]:
        raise NotImplementedError

    def dtype(self, name: str) -> str:
        raise NotImplementedError

    def _lazy(self, name: str, shape: tuple[int, ...]) -> Lazy:
        raise NotImplementedError

    def has(self, name: str) -> bool:
        return name in self.names()

    def take(self, name: str, shape: tuple[int, ...]) -> Lazy:
        """Claim tensor `name` (exactly once), checking its shape; it is read only when loaded."""
        if not self.has(name):
            raise Gemma3nError(f"checkpoint {self.dir}: missing tensor {name}")
        if tuple(self.shape(name)) != tuple(shape):
            raise Gemma3nError(f"checkpoint {self.dir}: tensor {name} has shape {list(self.shape(name))}, "
                               f"expected {list(shape)}")
        if name in self.used:
            raise AssertionError(f"tensor {name} used twice by the exporter")
        self.used.add(name)
        return self._lazy(name, tuple(shape))

    def ignore(self, pattern: str) -> None:
        """Mark every tensor whose name matches the regular expression as deliberately unused."""
        rx = re.compile(pattern)
        self.ignored.update(n for n in self.names() if rx.fullmatch(n))

    def finish(self) -> None:
        left = sorted(set(self.names()) - self.used - self.ignored)
        if left:
            more = f" (and {len(left) - 5} more)" if len(left) > 5 else ""
            raise Gemma3nError(f"checkpoint {self.dir}: unexpected tensors {', '.join(left[:5])}{more}")


class Checkpoint(TensorSource):
    """A Hugging Face checkpoint directory: config.json and (sharded) safetensors."""

    def __init__(self, directory: str):
        super().__init__()
        self.dir = os.fspath(directory)
        if not os.path.isdir(self.dir):
            raise Gemma3nError(f"{self.dir}: checkpoint directory not found")
        real = os.path.realpath(self.dir)
        # Hugging Face's cache links snapshots/REV/FILE to ../../blobs/HASH: the repository's cache is the root
        self.root = os.path.dirname(os.path.dirname(real)) if os.path.basename(os.path.dirname(real)) == "snapshots" \
            else real
        cfg_path = self._inside(os.path.join(self.dir, "config.json"))
        if not os.path.isfile(cfg_path):
            raise Gemma3nError(f"{self.dir}: no config.json (is this a Hugging Face checkpoint directory?)")
        try:
            with open(cfg_path) as f:
                self.config: dict = json.load(f)
        except json.JSONDecodeError as e:
            raise Gemma3nError(f"{cfg_path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(self.config, dict):
            raise Gemma3nError(f"{cfg_path}: expected a JSON object, got {type(self.config).__name__}")
        self.files: dict[str, SafetensorsFile] = {}
        self.where: dict[str, str] = {}
        for fname in self._shard_names():
            st = SafetensorsFile(self._inside(os.path.join(self.dir, fname)))
            self.files[fname] = st
            for name in st.tensors:
                self.where[name] = fname
        self.tokenizer_path = self._inside(os.path.join(self.dir, "tokenizer.model"))

    def _inside(self, path: str) -> str:
        """A file of the checkpoint must lie inside it: a symlink or index entry leading elsewhere is
        refused, so nothing outside is read, or copied into the bundle (tokenizer.model)."""
        real = os.path.realpath(path)
        if os.path.commonpath([real, self.root]) != self.root:
            raise Gemma3nError(f"{path}: leads outside the checkpoint directory (to {real})")
        return path

    def _shard_names(self) -> list[str]:
        index = self._inside(os.path.join(self.dir, "model.safetensors.index.json"))
        if os.path.isfile(index):
            with open(index) as f:
                try:
                    names = sorted(set(json.load(f)["weight_map"].values()))
                except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                    raise Gemma3nError(f"{index}: not a safetensors index (no weight_map of tensor -> file)") from None
            if not all(isinstance(n, str) for n in names):
                raise Gemma3nError(f"{index}: weight_map must name files")
            for n in names:
                if not os.path.isfile(os.path.join(self.dir, n)):
                    raise Gemma3nError(f"{index}: names shard {n}, which is missing")
            return names
        names = sorted(n for n in os.listdir(self.dir) if re.fullmatch(r"model.*\.safetensors", n))
        if not names:
            raise Gemma3nError(f"{self.dir}: no model*.safetensors files")
        return names

    def names(self):
        return self.where.keys()

    def has(self, name: str) -> bool:
        return name in self.where

    def info(self, name: str):
        return self.files[self.where[name]].tensors[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.info(name).shape

    def dtype(self, name: str) -> str:
        return self.info(name).dtype

    def _lazy(self, name: str, shape: tuple[int, ...]) -> Lazy:
        st, dtype = self.files[self.where[name]], self.info(name).dtype
        return Lazy(name, shape, lambda: to_f32(st.array(name), dtype), lambda a, b: to_f32(st.array(name)[a:b], dtype))
