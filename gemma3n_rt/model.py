"""The Python API: load a bundle, then stream, generate or chat, with images and audio.

One Model holds one decoder session and one KV cache. Requests from several threads are
serialised by a lock held for the life of each generation (a generator releases it when it ends,
is closed, or is collected). A request whose prompt starts like what the cache holds reuses that
prefix, so a chat's next turn, or an app resending its conversation, computes only what is new.
"""
from __future__ import annotations

import os
import threading
from typing import Iterator

import numpy as np

from .bundle import Bundle, resolve_path
from .decoder import DEFAULT_CHUNK, TextDecoder
from .errors import Gemma3nError
from .generate import GenerationStats, LogitsProcessor, generate_step, prefill
from .media import MediaEncoders
from .planner import ALIASES, choose_slice
from .prompt import Ids, PreparedPrompt, SpecialTokens, chat_prompt, completion_ids
from .multimodal import Embedder
from .sampling import Sampler, SamplingParams
from .tokenizer import StreamDecoder, Tokenizer

DEFAULT_CONTEXT = 4096


def demo_bundle_path() -> str:
    """The embedded demo bundle: installed with the package (gemma3n_rt/assets/demo), or in a source
    checkout beside the package (assets/demo)."""
    here = os.path.dirname(os.path.abspath(__file__))
    installed = os.path.join(here, "assets", "demo")
    return installed if os.path.isdir(installed) else os.path.join(os.path.dirname(here), "assets", "demo")


def default_bundle_path(path: str | os.PathLike | None = None) -> str:
    """`path`, else $GEMMA3N_MODEL, else the demo; '~' expanded."""
    return resolve_path(path or os.environ.get("GEMMA3N_MODEL") or demo_bundle_path())


def load(path: str | os.PathLike | None = None, effective: str | None = None, memory_budget=None,
         threads: int | None = None, context: int | None = None, chunk: int = DEFAULT_CHUNK,
         modalities=None, keep_vision: bool = False, keep_audio: bool = False, windowing: bool = False,
         max_crops: int = 4, max_clips: int = 8, lock_weights: bool = False) -> "Model":
    """Open a bundle (default: $GEMMA3N_MODEL, else the demo) and the slice that fits.

    context: tokens (default the smaller of 4096 and the model's maximum). modalities: the inputs
    the memory plan reserves an encoder for ("image", "audio"; default: every encoder the bundle
    has). keep_vision / keep_audio keep an encoder loaded after use instead of releasing it.
    windowing: encode large or far-from-square images as the whole plus up to max_crops crops.
    max_clips: audio longer than 30 s is split into 30 s clips, at most this many. lock_weights: lock
    in memory the weights a decode step reads (mlock), so that a memory limit near the model's size
    doesn't make decode read them back from flash; refused where they and the rest don't fit."""
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a whole number >= 1 (or None for one per core), got {threads!r}")
    bundle = Bundle.open(default_bundle_path(path))
    if context is None:
        context = min(DEFAULT_CONTEXT, bundle.text.max_position_embeddings)
    if modalities is None:
        modalities = tuple(m for m, t in (("image", bundle.vision), ("audio", bundle.audio)) if t)
    spec = choose_slice(bundle, effective, memory_budget, context, chunk, modalities)
    media = MediaEncoders(bundle, threads, keep_vision, keep_audio, windowing, max_crops, max_clips)
    return Model(bundle, TextDecoder(bundle, spec, context, threads, chunk, lock_weights), media)


class Model:
    def __init__(self, bundle: Bundle, decoder: TextDecoder, media: MediaEncoders | None = None):
        self.bundle, self.decoder = bundle, decoder
        self.embedder = Embedder(bundle)
        self.media = media or MediaEncoders(bundle, decoder.threads)
        self.tokenizer = Tokenizer(bundle.file(bundle.tokenizer))
        self.special = SpecialTokens.from_tokenizer(self.tokenizer)
        self.last_stats = GenerationStats()
        self._lock = threading.Lock()
        self._holder: int | None = None     # the thread generating now

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
        with self._lock:
            if spec == self.decoder.spec:
                return
            old = self.decoder
            old.close()
            try:
                self.decoder = TextDecoder(self.bundle, spec, old.context, old.threads, old.chunk, old.lock_weights)
            except BaseException:
                self.decoder = TextDecoder(self.bundle, old.spec, old.context, old.threads, old.chunk, old.lock_weights)
                raise

    # -- prompts ---------------------------------------------------------------------------------

    def prompt(self, prompt: str | list[dict], images=None, audio=None, chat: bool = True) -> PreparedPrompt:
        """The prepared prompt: a string is one user turn (plain completion text with chat=False), a
        list is messages whose content may hold {"type": "image"|"audio", ...} parts. `images` and
        `audio` (paths, bytes, PIL images, arrays) go before the text of a string prompt."""
        if isinstance(prompt, str):
            if not chat:
                if images or audio:
                    raise ValueError("images and audio need the chat template (chat=True)")
                return PreparedPrompt(completion_ids(self.tokenizer, self.special, prompt))
            parts = [{"type": "image", "image": x} for x in images or ()]
            parts += [{"type": "audio", "audio": x} for x in audio or ()]
            prompt = [{"role": "user", "content": parts + [{"type": "text", "text": prompt}] if parts else prompt}]
        elif images or audio:
            raise ValueError("with a list of messages, put images and audio in the messages as parts")
        return chat_prompt(self.tokenizer, self.special, self.media.encode_messages(prompt))

    # -- generation ------------------------------------------------------------------------------

    def stream(self, prompt: str | list[dict], max_new_tokens: int = 256, chat: bool = True, images=None,
               audio=None, stats: GenerationStats | None = None, logits_processors=(), cancel=None,
               **sampling) -> Iterator[str]:
        """Yield text pieces as they are decoded. Sampling: temperature (0 = greedy), top_k, top_p,
        seed. `cancel` (a threading.Event) stops generation before the next token."""
        prepared = self.prompt(prompt, images, audio, chat)
        tokens = self.generate_tokens(prepared, max_new_tokens, None, stats, logits_processors, cancel, **sampling)
        return self.text(tokens)

    def generate(self, prompt: str | list[dict], max_new_tokens: int = 256, chat: bool = True, images=None,
                 audio=None, **kwargs) -> str:
        return "".join(self.stream(prompt, max_new_tokens, chat, images, audio, **kwargs))

    def generate_ids(self, input_ids: list[int], max_new_tokens: int, stop_ids=None, **sampling) -> list[int]:
        """Raw ids in, generated ids out (a stop token, if reached, is the last id)."""
        return list(self.generate_tokens(PreparedPrompt(list(input_ids)), max_new_tokens, stop_ids, **sampling))

    def generate_tokens(self, prompt: PreparedPrompt, max_new_tokens: int, stop_ids=None,
                        stats: GenerationStats | None = None, logits_processors: tuple[LogitsProcessor, ...] = (),
                        cancel: threading.Event | None = None, **sampling) -> Iterator[int]:
        """Generated ids for a prepared prompt (checked now; generated as the iterator is read)."""
        sampler = Sampler(SamplingParams(**sampling))
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a whole number >= 0, got {max_new_tokens!r}")
        if not prompt.ids:
            raise Gemma3nError("empty prompt")
        self.decoder.check_fits(len(prompt))
        stop = self.special.stop_ids if stop_ids is None else frozenset(stop_ids)
        return self._locked(prompt, sampler, max_new_tokens, stop, stats, tuple(logits_processors), cancel)

    def _locked(self, prompt, sampler, max_new_tokens, stop, stats, processors, cancel) -> Iterator[int]:
        me = threading.get_ident()
        if self._holder == me:
            raise Gemma3nError("this thread is already generating with this model: finish or close() "
                               "that generator first")
        with self._lock:
            self._holder = me
            try:
                start = self._reuse_prefix(prompt)
                self.last_stats = stats if stats is not None else GenerationStats()
                yield from generate_step(self.decoder, self.embedder, prompt, sampler, max_new_tokens, stop,
                                         self.last_stats, start, processors, cancel)
            finally:
                self._holder = None

    def _reuse_prefix(self, prompt: PreparedPrompt) -> int:
        """Keep the longest cached prefix of `prompt` (at least its last position is fed again)."""
        held, keys = self.decoder.cache.held, prompt.keys()
        n, p = min(len(held), len(keys) - 1), 0
        while p < n and held[p] == keys[p]:
            p += 1
        if not self.decoder.cache.truncate(p):
            self.decoder.reset()
            return 0
        return p

    def next_token_logits(self, input_ids: list[int]) -> np.ndarray:
        """float32 [vocab]: the softcapped logits after `input_ids`."""
        prompt = PreparedPrompt(list(input_ids))
        if not prompt.ids:
            raise Gemma3nError("empty prompt")
        self.decoder.check_fits(len(prompt))
        with self._lock:
            logits = prefill(self.decoder, self.embedder, prompt, self._reuse_prefix(prompt))
        return np.array(logits, dtype=np.float32)

    def chat(self, system: str | None = None, on_overflow: str = "drop_oldest") -> "Chat":
        return Chat(self, system, on_overflow)

    def text(self, tokens: Iterator[int]) -> Iterator[str]:
        """Stream the text of generated ids (up to a stop token); closing it closes `tokens`."""
        detok = StreamDecoder(self.tokenizer)
        text_vocab = self.tokenizer.vocab_size
        try:
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
        finally:
            tokens.close()     # closing the text stream ends generation and frees the model


OVERFLOW = ("drop_oldest", "error")


class Chat:
    """A multi-turn conversation. Each turn sends the whole conversation; the model's prefix cache
    makes that cost only the new tokens. When the conversation outgrows the context,
    on_overflow="drop_oldest" drops the oldest turns (the system prompt stays) and records how
    many in `dropped_turns`; "error" raises instead."""

    def __init__(self, model: Model, system: str | None = None, on_overflow: str = "drop_oldest"):
        if on_overflow not in OVERFLOW:
            raise ValueError(f"on_overflow must be one of {', '.join(OVERFLOW)}, got {on_overflow!r}")
        self.model, self.system, self.on_overflow = model, system, on_overflow
        self.turns: list[tuple[dict, dict]] = []   # (user message with encoded media, reply as ids)
        self.dropped_turns = 0                     # dropped to fit the context, over the whole chat

    def _prompt(self, turns: list, user: dict) -> PreparedPrompt:
        m = self.model
        head = [{"role": "system", "content": self.system}] if self.system is not None else []
        messages = head + [msg for pair in turns for msg in pair] + [user]
        return chat_prompt(m.tokenizer, m.special, messages)

    def send(self, text: str, max_new_tokens: int = 256, images=None, audio=None, **kwargs) -> Iterator[str]:
        """Add a user turn and stream the model's reply."""
        m = self.model
        parts = [{"type": "image", "image": x} for x in images or ()]
        parts += [{"type": "audio", "audio": x} for x in audio or ()]
        content = parts + [{"type": "text", "text": text}] if parts else text
        user = m.media.encode_messages([{"role": "user", "content": content}])[0]
        prompt = self._prompt(self.turns, user)
        if len(prompt) > m.context:
            if self.on_overflow == "error":
                m.decoder.check_fits(len(prompt))
            room = min(max_new_tokens, m.context // 4)     # leave the reply some room
            while self.turns and len(prompt) > m.context - room:
                self.turns.pop(0)
                self.dropped_turns += 1
                prompt = self._prompt(self.turns, user)
        return self._reply(user, prompt, max_new_tokens, kwargs)

    def _reply(self, user: dict, prompt: PreparedPrompt, max_new_tokens: int, kwargs) -> Iterator[str]:
        m = self.model
        reply: list[int] = []
        tokens = m.generate_tokens(prompt, max_new_tokens, **kwargs)
        try:
            yield from m.text(self._record(tokens, reply))
        finally:
            if reply and reply[-1] in m.special.stop_ids:
                reply.pop()
            self.turns.append((user, {"role": "assistant", "content": Ids(tuple(reply))}))

    @staticmethod
    def _record(tokens: Iterator[int], into: list[int]) -> Iterator[int]:
        try:
            for t in tokens:
                into.append(t)
                yield t
        finally:
            tokens.close()
