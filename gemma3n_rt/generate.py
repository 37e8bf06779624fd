"""The per-token loop, in one place: prefill, then sample and feed back one token at a time."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

from .decoder import TextDecoder
from .memory import PeakRss
from .sampling import Sampler


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    stop_reason: str = ""               # "stop token", "max tokens" or "context full"
    peak: PeakRss = field(default_factory=PeakRss)

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tps(self) -> float:
        # the first generated token comes from the prefill logits, so decode ran generated-1 steps
        steps = max(self.generated_tokens - 1, 0)
        return steps / self.decode_seconds if self.decode_seconds else 0.0

    def summary(self) -> str:
        mib = 1 << 20
        return (f"prompt {self.prompt_tokens} tok, prefill {self.prefill_tps:.1f} tok/s | "
                f"generated {self.generated_tokens} tok, decode {self.decode_tps:.1f} tok/s | "
                f"time to first token {self.prefill_seconds:.3f} s | "
                f"peak RssAnon {self.peak.anon / mib:.1f} MiB, RssFile {self.peak.file / mib:.1f} MiB | "
                f"stop: {self.stop_reason}")


def generate_step(decoder: TextDecoder, prompt_ids: list[int], sampler: Sampler, max_new_tokens: int,
                  stop_ids=frozenset(), stats: GenerationStats | None = None) -> Iterator[int]:
    """Yield generated token ids. A stop token is yielded (callers decide whether to show it) and
    ends generation; it is not fed back, so the cache holds the prompt and the tokens before it."""
    stats = stats if stats is not None else GenerationStats()
    stats.prompt_tokens += len(prompt_ids)
    t0 = time.perf_counter()
    logits = decoder.prefill(prompt_ids)
    stats.prefill_seconds += time.perf_counter() - t0
    stats.peak.sample()
    for i in range(max_new_tokens):
        t0 = time.perf_counter()
        token = sampler.sample(logits)
        stats.generated_tokens += 1
        if token in stop_ids:
            stats.stop_reason = "stop token"
        elif i == max_new_tokens - 1:
            stats.stop_reason = "max tokens"
        elif decoder.position >= decoder.context:
            stats.stop_reason = "context full"
        stats.decode_seconds += time.perf_counter() - t0
        yield token
        if stats.stop_reason:
            return
        t0 = time.perf_counter()
        logits = decoder.forward([token])
        stats.decode_seconds += time.perf_counter() - t0
        stats.peak.sample()
