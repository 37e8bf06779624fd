"""The Python API: load a bundle, then stream, generate or chat."""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from .bundle import Bundle
from .decoder import DEFAULT_CHUNK, TextDecoder
from .generate import GenerationStats, generate_step
from .planner import ALIASES, choose_slice
from .prompt import SpecialTokens, chat_ids, completion_ids, next_turn_ids
from .sampling import Sampler, SamplingParams
from .tokenizer import StreamDecoder, Tokenizer

DEFAULT_CONTEXT = 4096


def demo_bundle_path() -> str:
    """The embedded demo bundle, installed with the package or beside it in a source checkout."""
    try:
        from importlib.resources import files
        path = files("gemma3n_rt.assets") / "demo"
        if path.is_dir():
            return str(path)
    except ModuleNotFoundError:
        pass
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "demo")


def load(path: str | None = None, effective: str | None = None, memory_budget=None, threads: int | None = None,
         context: int = DEFAULT_CONTEXT, chunk: int = DEFAULT_CHUNK) -> "Model":
    """Open a bundle (default: $GEMMA3N_MODEL, else the demo) and the slice that fits."""
    bundle = Bundle.open(path or os.environ.get("GEMMA3N_MODEL") or demo_bundle_path())
    spec = choose_slice(bundle, effective, memory_budget, context, chunk)
    return Model(bundle, TextDecoder(bundle, spec, context, threads, chunk))


class Model:
    def __init__(self, bundle: Bundle, decoder: TextDecoder):
        self.bundle, self.decoder = bundle, decoder
        self.tokenizer = Tokenizer(bundle.file(bundle.tokenizer))
        self.special = SpecialTokens.from_tokenizer(self.tokenizer)
        self.last_stats = GenerationStats()
        self._owner = None     # the Chat whose history the KV cache holds, if any

    @property
    def slice(self) -> str:
        return self.decoder.spec.name

    @property
    def context(self) -> int:
        return self.decoder.context

    @property
    def slices(self) -> list[str]:
        """The bundle's MatFormer catalog."""
        return [s.name for s in self.bundle.slices]

    def use_slice(self, name: str) -> None:
        """Switch to another slice of the catalog between requests. The row tables and tokenizer
        are kept; the old slice's session is released before the new one is created, so the two
        are never resident together. The KV cache starts empty."""
        spec = self.bundle.slice(ALIASES.get(name.lower(), name))
        if spec == self.decoder.spec:
            return
        old = self.decoder
        old.close()
        self._owner = None
        try:
            self.decoder = TextDecoder(self.bundle, spec, old.context, old.threads, old.chunk, old.embed, old.ple)
        except BaseException:
            self.decoder = TextDecoder(self.bundle, old.spec, old.context, old.threads, old.chunk, old.embed, old.ple)
            raise

    def prompt_ids(self, prompt: str | list[dict], chat: bool = True) -> list[int]:
        """A string is one user turn (or plain completion text with chat=False); a list is messages."""
        if isinstance(prompt, str):
            if not chat:
                return completion_ids(self.tokenizer, self.special, prompt)
            prompt = [{"role": "user", "content": prompt}]
        return chat_ids(self.tokenizer, self.special, prompt)

    def _run(self, ids: list[int], max_new_tokens: int, stop_ids, fresh: bool, **sampling) -> Iterator[int]:
        sampler = Sampler(SamplingParams(**sampling))
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if fresh:
            self._owner = None
            self.decoder.reset()
        self.last_stats = GenerationStats()
        return generate_step(self.decoder, ids, sampler, max_new_tokens, stop_ids, self.last_stats)

    def stream(self, prompt: str | list[dict], max_new_tokens: int = 256, chat: bool = True, **sampling) -> Iterator[str]:
        """Yield text pieces as they are decoded. Sampling: temperature (0 = greedy), top_k, top_p, seed."""
        ids = self.prompt_ids(prompt, chat)
        yield from self._text(self._run(ids, max_new_tokens, self.special.stop_ids, True, **sampling))

    def generate(self, prompt: str | list[dict], max_new_tokens: int = 256, chat: bool = True, **sampling) -> str:
        return "".join(self.stream(prompt, max_new_tokens, chat, **sampling))

    def generate_ids(self, input_ids: list[int], max_new_tokens: int, stop_ids=None, **sampling) -> list[int]:
        """Raw ids in, generated ids out (a stop token, if reached, is the last id)."""
        stop = self.special.stop_ids if stop_ids is None else frozenset(stop_ids)
        return list(self._run(list(input_ids), max_new_tokens, stop, True, **sampling))

    def next_token_logits(self, input_ids: list[int]) -> np.ndarray:
        """float32 [vocab]: the softcapped logits after `input_ids`."""
        self._owner = None
        self.decoder.reset()
        return np.array(self.decoder.prefill(list(input_ids)), dtype=np.float32)

    def chat(self, system: str | None = None) -> "Chat":
        return Chat(self, system)

    def _text(self, tokens: Iterator[int]) -> Iterator[str]:
        detok = StreamDecoder(self.tokenizer)
        text_vocab = self.tokenizer.vocab_size
        for t in tokens:
            if t in self.special.stop_ids:
                break
            if t >= text_vocab:      # image/audio placeholder ids have no text
                continue
            piece = detok.push(t)
            if piece:
                yield piece
        tail = detok.flush()
        if tail:
            yield tail


class Chat:
    """A multi-turn conversation that keeps its KV cache between turns."""

    def __init__(self, model: Model, system: str | None = None):
        self.model, self.system = model, system
        self.history: list[int] = []   # every id of the conversation so far
        self.in_cache = 0              # how many of them the model's KV cache holds

    def send(self, text: str, max_new_tokens: int = 256, **sampling) -> Iterator[str]:
        """Add a user turn and stream the model's reply. Only ids the cache lacks are fed."""
        m = self.model
        first = not self.history
        turn = next_turn_ids(m.tokenizer, m.special, text, first_turn=first, system=self.system if first else None)
        if m._owner is not self:       # another request used the cache since: replay this conversation
            self.in_cache = 0
        m.decoder.check_fits(len(self.history) + len(turn))
        tokens = m._run(self.history[self.in_cache:] + turn, max_new_tokens, m.special.stop_ids,
                        fresh=self.in_cache == 0, **sampling)
        m._owner = self
        self.history += turn
        reply: list[int] = []
        try:
            yield from m._text(self._record(tokens, reply))
        finally:
            # The cache holds a prefix of the history (the last sampled id is never fed back).
            if reply and reply[-1] in m.special.stop_ids:
                reply[-1] = m.special.end_of_turn
            else:   # cut short: close the turn so the next one follows the template
                reply.append(m.special.end_of_turn)
            self.history += reply
            self.in_cache = m.decoder.position

    @staticmethod
    def _record(tokens: Iterator[int], into: list[int]) -> Iterator[int]:
        for t in tokens:
            into.append(t)
            yield t
