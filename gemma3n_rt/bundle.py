"""Opening a bundle directory (the on-disk format is specified in FORMAT.md beside this file)."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

from .config import AudioConfig, Quantization, RowTables, SliceSpec, TextConfig, VisionConfig
from .errors import Gemma3nError

FORMAT_NAME = "gemma3n-rt-bundle"
FORMAT_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)    # 1: text only; 2: no head_rescore; 3: no kv_cache (fp32 caches)
MANIFEST = "manifest.json"
SMALL_FILE = 16 << 20       # files up to this size are hashed whole on every load
SPOTS, SPOT = 16, 4096


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
    _checked: set = field(default_factory=set, compare=False, repr=False)   # folders whose files were checked

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Bundle":
        path = resolve_path(path)
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
            check_size(path, rel, meta)
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
        except Gemma3nError as e:
            raise Gemma3nError(f"{mpath}: {e}") from None

    def file(self, rel: str) -> str:
        """The path of a bundle file, for a component about to open it. The first time a folder's
        file is asked for, every file of that folder is checked (check_content): a text-only run
        reads nothing of vision/ or audio/."""
        folder = os.path.dirname(rel)
        if folder not in self._checked:
            for other, meta in self.manifest.get("files", {}).items():
                if os.path.dirname(other) == folder:
                    check_content(self.path, other, meta)
            self._checked.add(folder)
        return os.path.join(self.path, rel)

    def slice(self, name: str) -> SliceSpec:
        for s in self.slices:
            if s.name.lower() == name.lower():
                return s
        raise Gemma3nError(f"bundle has no slice {name!r} (it has: {', '.join(s.name for s in self.slices)})")

    def verify(self) -> None:
        """Check every file's sha256 against the manifest (reads the whole bundle)."""
        for rel, meta in self.manifest["files"].items():
            fpath = os.path.join(self.path, rel)
            if sha256_file(fpath) != meta["sha256"]:
                raise Gemma3nError(f"{fpath}: sha256 differs from the manifest (corrupted file)")


def verify(path: str | os.PathLike | None = None) -> str:
    """Open the bundle (default: $GEMMA3N_MODEL, else the demo) and check every file's sha256.
    Returns the bundle's path; raises Gemma3nError naming the first damaged file."""
    from .model import default_bundle_path
    bundle = Bundle.open(default_bundle_path(path))
    bundle.verify()
    return bundle.path


def check_size(bundle: str, rel: str, meta: dict) -> None:
    """Checked on open for every file: it exists with its size (a stat, nothing read)."""
    fpath = os.path.join(bundle, rel)
    if not os.path.isfile(fpath):
        raise Gemma3nError(f"{bundle}: bundle is missing {rel}")
    size = os.path.getsize(fpath)
    if size != meta["size"]:
        raise Gemma3nError(f"{fpath}: size {size} differs from the manifest's {meta['size']} (truncated or replaced file)")


def check_content(bundle: str, rel: str, meta: dict) -> None:
    """Checked before a component uses its files: a small file (graphs, tokenizer, the towers'
    tables) has its sha256, a large one its spot hash."""
    fpath = os.path.join(bundle, rel)
    size = os.path.getsize(fpath)
    if size <= SMALL_FILE:
        if sha256_file(fpath) != meta["sha256"]:
            raise Gemma3nError(f"{fpath}: sha256 differs from the manifest (corrupted file)")
    elif "spot_sha256" in meta and spot_sha256(fpath) != meta["spot_sha256"]:
        raise Gemma3nError(f"{fpath}: content differs from the manifest (corrupted file; "
                           f"gemma3n-run --verify checks every byte)")


def spot_sha256(path: str) -> str:
    """sha256 of SPOTS blocks of 4 KiB spread evenly over the file: a cheap check, run on every
    load, that catches a large file zeroed or replaced by another of the same size."""
    h = hashlib.sha256()
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        for i in range(SPOTS):
            f.seek(i * max(size - SPOT, 0) // (SPOTS - 1))
            h.update(f.read(SPOT))
    return h.hexdigest()


def resolve_path(path: str | os.PathLike) -> str:
    """An absolute path, with '~' expanded (also for quoted shell arguments and environment variables)."""
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
