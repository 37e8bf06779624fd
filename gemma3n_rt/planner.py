"""The memory ledger of each slice, and choosing the slice a device can hold."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .bundle import Bundle
from .config import FULL, SliceSpec, TextConfig
from .errors import Gemma3nError
from .kvcache import DTYPES as KV_DTYPES
from .memory import parse_bytes

MiB = 1 << 20
# Measured (bench/ledger_check.py): onnxruntime's session, arenas and Python objects of a loaded
# decoder, beyond its weights; how much larger MatMulNBits weights are once prepacked (int4
# blocks of 32 gain a float block sum beside each scale); and the SentencePiece model in memory
# (47 MB for Gemma's 262,144 pieces).
SESSION_OVERHEAD = 28 * MiB
# A session that maps prepacked weights (and at first load writes them) keeps more anonymous memory
# than a plain one less its weights, by a run-to-run spread of its own: medium E2B, 116.6-131.1 MiB
# after generating in 12 runs against 116.6 (bench/ledger_check.py --prepacked on|off); at its
# highest, 106.1-121.9 MiB in four runs against a ledger (with 12 MiB here) of 121.1; with fp16
# caches 103.7-113.4 MiB in five runs against a ledger (with 20 MiB here) of 113.1.
MAPPED_OVERHEAD = 28 * MiB
PREPACK = {"int4": 1.23, "int8": 1.11, "fp32": 1.0}   # int4 refit (from 1.2) when the head became int4
TOKENIZER_BYTES_PER_PIECE = 208
# onnxruntime's arena while a full chunk runs (decoder.py returns it to the system after each
# chunk): per token of the chunk, in floats per hidden unit, per FFN unit and per attention score.
# Fitted on the highest RssAnon sampled while contexts filled (bench/ledger_check.py): real-shape
# E2B and Gemma 3 270M at 1024 and 4096 tokens, a medium and a small Gemma 3n (bench/synthetic.py)
# at 1024. Gemma 3n's AltUp keeps four copies of the hidden state, Gemma 3 one.
ACTIVATION_FLOATS = {"gemma3n": (31, 15, 3), "gemma3": (4, 3, 4)}
# ... but never below this: small Gemma 3n models (hidden 256) hold about as much as twice their size
# (refit from 32 MiB with fp16 caches: the small model's highest RssAnon fell to 86.4-86.7 MiB)
ACTIVATION_FLOOR = {"gemma3n": 26 * MiB, "gemma3": 16 * MiB}
ALIASES = {"2b": "E2B", "4b": "E4B"}
# An encoder's resident bytes per weight byte and its workspace for one input, from the real-shape
# towers (bench/vision_encoder.py, bench/audio_encoder.py: RssAnon + RssFile at the peak): fp32
# weights stay file-mapped (x1); int8 MatMulNBits are prepacked (x1.2); the image tower's int8
# weights are dequantized at run time (x5: the int8 file and a float32 copy).
ENCODER_RESIDENT = {("image", "fp32"): 1.0, ("image", "int8"): 5.0, ("audio", "fp32"): 1.0, ("audio", "int8"): 1.2}
ENCODER_WORKSPACE = {"image": 448 * MiB, "audio": 512 * MiB}


@dataclass(frozen=True)
class Ledger:
    slice: SliceSpec
    weights: int          # decoder weights incl. the LM head, resident once loaded (prepacked; not the gathered ones)
    kv: int               # KV caches at the chosen context
    workspace: int        # activations of one prefill chunk, the session's fixed overhead, the tokenizer
    mapped: bool = False  # the prepacked weights are a mapped file (sessions.maps_prepacked), not anonymous memory

    @property
    def total(self) -> int:
        """What the slice needs resident to run at speed; mapped weights count too, as page cache."""
        return self.weights + self.kv + self.workspace

    @property
    def anon(self) -> int:
        """The anonymous memory (the kernel can't reclaim it without swap): all of it, or with the
        weights mapped all but them."""
        return self.total - self.weights if self.mapped else self.total


def ledger(cfg: TextConfig, spec: SliceSpec, context: int, chunk: int, quant: str = "int4",
           mapped: bool = False, kv_cache: str = "fp32") -> Ledger:
    per_position = 2 * cfg.num_kv_heads * cfg.head_dim * np.dtype(KV_DTYPES[kv_cache]).itemsize   # K and V
    kv = sum(per_position * (context if c.type == FULL else min(context, cfg.sliding_window - 1 + chunk))
             for c in spec.caches)
    t = min(chunk, context)
    arch = cfg.architecture if cfg.architecture in ACTIVATION_FLOATS else "gemma3n"
    per_hidden, per_ffn, per_score = ACTIVATION_FLOATS[arch]
    activations = max(ACTIVATION_FLOOR[arch], 4 * t * (per_hidden * cfg.hidden_size + per_ffn * max(spec.ffn_widths)
                                                       + per_score * cfg.num_attention_heads * context))
    # weights only gathered by rows stay mapped (file-backed); the rest is prepacked
    weights = int((spec.weight_bytes - spec.gathered_bytes) * PREPACK.get(quant, 1.0))
    fixed = (SESSION_OVERHEAD + (MAPPED_OVERHEAD if mapped else 0) + 4 * cfg.vocab_size
             + TOKENIZER_BYTES_PER_PIECE * cfg.vocab_size)
    return Ledger(spec, weights, kv, fixed + activations, mapped)


def encoder_bytes(bundle: Bundle, modalities=()) -> int:
    """Resident memory an encoder adds while it runs: the largest of the ones the request may use
    (they are loaded one at a time and released after encoding)."""
    towers = {"image": bundle.vision, "audio": bundle.audio}
    unknown = set(modalities) - towers.keys()
    if unknown:
        raise ValueError(f"modalities are 'image' and 'audio', got {sorted(unknown)}")
    return max((int(t.weight_bytes * ENCODER_RESIDENT.get((m, t.quant), 1.0)) + ENCODER_WORKSPACE[m]
                for m, t in towers.items() if m in modalities and t is not None), default=0)


CGROUP_ROOT = "/sys/fs/cgroup"
NO_LIMIT = 1 << 60          # cgroup v1 reports "no limit" as a huge number (PAGE_COUNTER_MAX pages)


def _read_first_int(path: str, prefix: str | None = None) -> int | None:
    """The integer in a /proc or /sys file (or on its line starting with `prefix`); None if absent."""
    try:
        with open(path) as f:
            for line in f:
                if prefix is None:
                    word = line.split()[0] if line.split() else ""
                    return int(word) if word.isdigit() else None
                if line.startswith(prefix):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _own_cgroups(proc_cgroup: str) -> dict[str, str]:
    """This process's cgroup paths from /proc/self/cgroup: {"v2": path} and/or {"memory": path}."""
    out = {}
    try:
        with open(proc_cgroup) as f:
            for line in f:
                parts = line.rstrip("\n").split(":", 2)
                if len(parts) != 3:
                    continue
                if parts[0] == "0" and parts[1] == "":
                    out["v2"] = parts[2]
                elif "memory" in parts[1].split(","):
                    out["memory"] = parts[2]
    except OSError:
        pass
    return out


def _cgroup_levels(cgroup_root: str, proc_cgroup: str):
    """(limit, usage, inactive file pages) of this process's memory cgroup and of each parent with a
    limit. cgroup v2: memory.max, memory.current, inactive_file in memory.stat; v1:
    memory.limit_in_bytes, memory.usage_in_bytes, total_inactive_file."""
    own = _own_cgroups(proc_cgroup)
    candidates = []
    if "memory" in own:
        candidates.append((os.path.join(cgroup_root, "memory"), own["memory"], "memory.limit_in_bytes",
                           "memory.usage_in_bytes", "total_inactive_file"))
    if "v2" in own:
        for base in (cgroup_root, os.path.join(cgroup_root, "unified")):
            candidates.append((base, own["v2"], "memory.max", "memory.current", "inactive_file"))
    for base, rel, limit_file, usage_file, inactive in candidates:
        rel = rel.strip("/")
        while True:     # the cgroup and each parent up to the root
            d = os.path.join(base, rel) if rel else base
            limit = _read_first_int(os.path.join(d, limit_file))      # v2 "max" reads as None
            usage = _read_first_int(os.path.join(d, usage_file))
            if limit is not None and usage is not None and limit < NO_LIMIT:
                yield limit, usage, _read_first_int(os.path.join(d, "memory.stat"), inactive + " ") or 0
            if not rel:
                break
            rel = os.path.dirname(rel)


def cgroup_headroom(cgroup_root: str = CGROUP_ROOT, proc_cgroup: str = "/proc/self/cgroup") -> int | None:
    """Bytes this process's memory cgroup still allows, the tightest over the cgroup and its
    parents; None when there is no limit. Usage counts page cache, so its inactive file pages
    (reclaimed before anything is killed) are given back."""
    rooms = [max(limit - usage + inactive, 0) for limit, usage, inactive in _cgroup_levels(cgroup_root, proc_cgroup)]
    return min(rooms, default=None)


def memory_limit(meminfo: str = "/proc/meminfo", cgroup_root: str = CGROUP_ROOT,
                 proc_cgroup: str = "/proc/self/cgroup") -> int | None:
    """The most memory this process can hold: the smallest of its memory cgroups' limits and the
    RAM; None when none can be read."""
    kib = _read_first_int(meminfo, "MemTotal:")
    values = [limit for limit, _, _ in _cgroup_levels(cgroup_root, proc_cgroup)]
    values += [kib * 1024] if kib is not None else []
    return min(values, default=None)


def available_memory(meminfo: str = "/proc/meminfo", cgroup_root: str = CGROUP_ROOT,
                     proc_cgroup: str = "/proc/self/cgroup") -> int | None:
    """Memory a new slice may use: MemAvailable, or less where a memory cgroup (a container, an
    app's limit) leaves less room; None when neither can be read."""
    kib = _read_first_int(meminfo, "MemAvailable:")
    free = kib * 1024 if kib is not None else None
    room = cgroup_headroom(cgroup_root, proc_cgroup)
    values = [v for v in (free, room) if v is not None]
    return min(values) if values else None


def choose_slice(bundle: Bundle, effective: str | None, memory_budget, context: int, chunk: int,
                 modalities=()) -> SliceSpec:
    """A named slice, or the largest one whose ledger, plus the encoders of `modalities`, fits the
    budget (default: free memory)."""
    if effective is not None and effective.lower() != "auto":
        return bundle.slice(ALIASES.get(effective.lower(), effective))
    budget = parse_bytes(memory_budget) if memory_budget is not None else available_memory()
    encoders = encoder_bytes(bundle, modalities)
    quant = bundle.quant.decoder
    ledgers = sorted((ledger(bundle.text, s, context, chunk, quant, kv_cache=bundle.quant.kv_cache) for s in bundle.slices),
                     key=lambda l: l.slice.effective_params)
    fitting = [l for l in ledgers if budget is not None and l.total + encoders <= budget]
    if fitting:
        return fitting[-1].slice
    if budget is None:      # free memory unknown: take the largest
        return ledgers[-1].slice
    smallest = ledgers[0]
    with_encoders = f" plus {encoders / MiB:.0f} MiB for the {'/'.join(modalities)} encoder" if encoders else ""
    raise Gemma3nError(f"memory budget {budget / MiB:.0f} MiB is too small: the smallest slice, {smallest.slice.name}, "
                       f"needs {smallest.total / MiB:.0f} MiB at context {context}{with_encoders}")
