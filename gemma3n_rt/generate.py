"""The per-token loop, in one place: prefill a prepared prompt, then sample and feed back one token
at a time."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from .decoder import TextDecoder
from .memory import PeakRss
from .multimodal import Embedder
from .prompt import PreparedPrompt
from .sampling import Sampler

# (ids so far, logits) -> logits: applied before sampling, e.g. to ban or bias tokens
LogitsProcessor = Callable[[list[int], np.ndarray], np.ndarray]
FINISH_REASONS = {"stop token": "stop", "max tokens": "length", "context full": "length", "cancelled": "cancelled"}


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    cached_tokens: int = 0              # prompt tokens whose KV came from the cache, not computed
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    stop_reason: str = ""               # "stop token", "max tokens", "context full" or "cancelled"
    peak: PeakRss = field(default_factory=PeakRss)

    @property
    def finish_reason(self) -> str:
        """As OpenAI's API says it: "stop", "length" (or "cancelled")."""
        return FINISH_REASONS.get(self.stop_reason, "")

    @property
    def prefill_tps(self) -> float:
        computed = self.prompt_tokens - self.cached_tokens
        return computed / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tps(self) -> float:
        # the first generated token comes from the prefill logits, so decode ran generated-1 steps
        steps = max(self.generated_tokens - 1, 0)
        return steps / self.decode_seconds if self.decode_seconds else 0.0

    def summary(self) -> str:
        mib = 1 << 20
        cached = f" ({self.cached_tokens} cached)" if self.cached_tokens else ""
        return (f"prompt {self.prompt_tokens} tok{cached}, prefill {self.prefill_tps:.1f} tok/s | "
                f"generated {self.generated_tokens} tok, decode {self.decode_tps:.1f} tok/s | "
                f"time to first token {self.prefill_seconds:.3f} s | "
                f"peak RssAnon {self.peak.anon / mib:.1f} MiB, RssFile {self.peak.file / mib:.1f} MiB | "
                f"stop: {self.stop_reason}")


def prefill(decoder: TextDecoder, embed: Embedder, prompt: PreparedPrompt, start: int = 0) -> np.ndarray:
    """Feed prompt positions [start, end) after the cache, chunk by chunk; logits of the last one."""
    decoder.check_fits(len(prompt))
    keys = prompt.keys()
    logits = None
    for a in range(start, len(prompt), decoder.chunk):
        b = min(a + decoder.chunk, len(prompt))
        embeds, ple = embed(prompt, a, b, decoder.spec.layers)
        logits = decoder.forward(embeds, ple, keys[a:b])
    if logits is None:
        raise ValueError("prefill needs at least one new position")
    return logits


def generate_step(decoder: TextDecoder, embed: Embedder, prompt: PreparedPrompt, sampler: Sampler,
                  max_new_tokens: int, stop_ids=frozenset(), stats: GenerationStats | None = None, start: int = 0,
                  logits_processors: Sequence[LogitsProcessor] = (),
                  cancel: threading.Event | None = None) -> Iterator[int]:
    """Yield generated token ids. The cache must hold prompt positions [0, start). A stop token is
    yielded (callers decide whether to show it) and ends generation; it is not fed back, so the
    cache holds the prompt and the tokens before it. Setting `cancel` ends generation before the
    next token."""
    stats = stats if stats is not None else GenerationStats()
    stats.prompt_tokens += len(prompt)
    stats.cached_tokens += start
    t0 = time.perf_counter()
    logits = prefill(decoder, embed, prompt, start)
    stats.prefill_seconds += time.perf_counter() - t0
    stats.peak.sample()
    ids = list(prompt.ids) if logits_processors else []
    if max_new_tokens == 0:
        stats.stop_reason = "max tokens"
    for i in range(max_new_tokens):
        if cancel is not None and cancel.is_set():
            stats.stop_reason = "cancelled"
            return
        t0 = time.perf_counter()
        for process in logits_processors:
            logits = process(ids, logits)
        token = sampler.sample(logits)
        if logits_processors:
            ids.append(token)
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
        step = PreparedPrompt([token])
        embeds, ple = embed(step, 0, 1, decoder.spec.layers)
        logits = decoder.forward(embeds, ple, [token])
        stats.decode_seconds += time.perf_counter() - t0
        stats.peak.sample()
