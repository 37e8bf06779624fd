"""The memory ledger of each slice, and choosing the slice a device can hold."""
from __future__ import annotations

from dataclasses import dataclass

from .bundle import Bundle
from .config import FULL, SliceSpec
from .errors import Gemma3nError
from .memory import parse_bytes

MiB = 1 << 20
FIXED_WORKSPACE = 48 * MiB        # onnxruntime arenas, Python, tokenizer: measured on the demo bundle
ALIASES = {"2b": "E2B", "4b": "E4B"}


@dataclass(frozen=True)
class Ledger:
    slice: SliceSpec
    weights: int          # decoder weights incl. the LM head, resident once loaded
    kv: int               # KV caches at the chosen context
    workspace: int        # activations of one prefill chunk plus fixed overhead

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.workspace


def ledger(bundle: Bundle, spec: SliceSpec, context: int, chunk: int) -> Ledger:
    cfg = bundle.text
    per_position = 2 * cfg.num_kv_heads * cfg.head_dim * 4          # K and V, float32
    kv = sum(per_position * (context if c.type == FULL else min(context, cfg.sliding_window - 1 + chunk))
             for c in spec.caches)
    # per chunk: 4 AltUp streams and a few temporaries of hidden size, the FFN, attention scores
    width = max(spec.ffn_widths)
    activations = chunk * 4 * (8 * cfg.hidden_size + 3 * width) + cfg.num_attention_heads * chunk * context * 4
    return Ledger(spec, spec.weight_bytes, kv, FIXED_WORKSPACE + activations + cfg.vocab_size * 4)


def available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def choose_slice(bundle: Bundle, effective: str | None, memory_budget, context: int, chunk: int) -> SliceSpec:
    """A named slice, or the largest one whose ledger fits the budget (default: free memory)."""
    if effective and effective.lower() != "auto":
        return bundle.slice(ALIASES.get(effective.lower(), effective))
    budget = parse_bytes(memory_budget) if memory_budget is not None else available_memory()
    ledgers = sorted((ledger(bundle, s, context, chunk) for s in bundle.slices), key=lambda l: l.slice.effective_params)
    fitting = [l for l in ledgers if l.total <= budget]
    if fitting:
        return fitting[-1].slice
    if memory_budget is None and budget == 0:      # free memory unknown: take the largest
        return ledgers[-1].slice
    smallest = ledgers[0]
    raise Gemma3nError(f"memory budget {budget / MiB:.0f} MiB is too small: the smallest slice, {smallest.slice.name}, "
                       f"needs {smallest.total / MiB:.0f} MiB at context {context}")
