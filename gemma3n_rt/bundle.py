"""Opening a bundle directory (the on-disk format is specified in FORMAT.md beside this file)."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from .config import AudioConfig, Quantization, RowTables, SliceSpec, TextConfig, VisionConfig
from .errors import Gemma3nError

FORMAT_NAME = "gemma3n-rt-bundle"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)    # version 1: text only
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Bundle:
    path: str
    manifest: dict                  # the raw JSON, for tools; the runtime reads the typed fields
    text: TextConfig
    slices: tuple[SliceSpec, ...]
    quant: Quantization
    tables: RowTables
    tokenizer: str
    vision: VisionConfig | None
    audio: AudioConfig | None

    @classmethod
    def open(cls, path: str) -> "Bundle":
        path = os.path.abspath(os.fspath(path))
        if not os.path.isdir(path):
            raise Gemma3nError(f"{path}: bundle directory not found")
        mpath = os.path.join(path, MANIFEST)
        if not os.path.isfile(mpath):
            raise Gemma3nError(f"{path}: not a gemma3n-rt bundle (no {MANIFEST}; export a checkpoint with gemma3n-export)")
        try:
            with open(mpath) as f:
                manifest = json.load(f)
        except json.JSONDecodeError as e:
            raise Gemma3nError(f"{mpath}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
            raise Gemma3nError(f"{mpath}: not a gemma3n-rt bundle manifest")
        if manifest.get("format_version") not in READABLE_VERSIONS:
            raise Gemma3nError(f"{mpath}: bundle format version {manifest.get('format_version')} is not supported "
                               f"by this runtime (it reads versions {', '.join(map(str, READABLE_VERSIONS))}); "
                               f"re-export the checkpoint")
        for rel, meta in manifest.get("files", {}).items():
            fpath = os.path.join(path, rel)
            if not os.path.isfile(fpath):
                raise Gemma3nError(f"{path}: bundle is missing {rel}")
            if os.path.getsize(fpath) != meta["size"]:
                raise Gemma3nError(f"{fpath}: size {os.path.getsize(fpath)} differs from the manifest's {meta['size']} "
                                   f"(truncated or replaced file)")
        slices = tuple(SliceSpec.from_dict(s) for s in manifest.get("slices", []))
        if not slices:
            raise Gemma3nError(f"{mpath}: the slice catalog is empty")
        try:
            return cls(path, manifest, TextConfig.from_dict(manifest["text_config"]), slices,
                       Quantization.from_dict(manifest["quantization"]), RowTables.from_dict(manifest["row_tables"]),
                       manifest["tokenizer"],
                       VisionConfig.from_dict(manifest["vision"]) if manifest.get("vision") else None,
                       AudioConfig.from_dict(manifest["audio"]) if manifest.get("audio") else None)
        except (KeyError, TypeError) as e:
            raise Gemma3nError(f"{mpath}: malformed manifest ({type(e).__name__}: {e})") from None

    def file(self, rel: str) -> str:
        return os.path.join(self.path, rel)

    def slice(self, name: str) -> SliceSpec:
        for s in self.slices:
            if s.name.lower() == name.lower():
                return s
        raise Gemma3nError(f"bundle has no slice {name!r} (it has: {', '.join(s.name for s in self.slices)})")

    def verify(self) -> None:
        """Check every file's sha256 against the manifest (reads the whole bundle)."""
        for rel, meta in self.manifest["files"].items():
            if sha256_file(self.file(rel)) != meta["sha256"]:
                raise Gemma3nError(f"{self.file(rel)}: sha256 differs from the manifest (corrupted file)")


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
