"""The generation bridge: one worker thread runs requests one after another (the Model serves one
generation at a time), and streams their text to the asyncio side through a queue per request.

A request waits in the worker's FIFO queue while another generates. Its cancel event (set when the
client disconnects) skips it if still queued, or ends its generation before the next token."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from ..errors import Gemma3nError
from ..generate import GenerationStats
from .schema import ApiError, GenerationRequest

log = logging.getLogger("gemma3n_rt.server")


@dataclass(frozen=True)
class Ready:
    """The prompt is encoded and fits; text follows."""


@dataclass(frozen=True)
class Finished:
    stats: GenerationStats
    finish_reason: str          # "stop", "length" or "cancelled"


class StopText:
    """Cuts streamed text at the first stop string, holding back a tail that may begin one."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops, self.held = stops, ""

    def push(self, piece: str) -> tuple[str, bool]:
        """(text safe to emit, whether a stop string was reached)."""
        text = self.held + piece
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held = ""
            return text[:min(hits)], True
        keep = next((k for k in range(min(len(text), max(map(len, self.stops), default=1) - 1), 0, -1)
                     if any(s.startswith(text[-k:]) for s in self.stops)), 0)
        self.held = text[len(text) - keep:]
        return text[:len(text) - keep], False

    def flush(self) -> str:
        text, self.held = self.held, ""
        return text


class Engine:
    """Holds the model (loaded in the background), and the worker that runs generations."""

    def __init__(self, loader: Callable[[], object]):
        self.loader = loader
        self.model = None
        self.load_error: BaseException | None = None
        self.loaded = threading.Event()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gemma3n-generate")
        self._active: set[threading.Event] = set()

    def start_loading(self, on_failure: Callable[[BaseException], None] = lambda e: None) -> None:
        def load():
            t0 = time.perf_counter()
            try:
                self.model = self.loader()
                log.info("model loaded: slice %s, context %d, in %.1f s", self.model.slice, self.model.context,
                         time.perf_counter() - t0)
            except BaseException as e:      # the CLI reports it and stops the server
                self.load_error = e
                log.error("loading the model failed: %s", e)
                on_failure(e)
            finally:
                self.loaded.set()
        threading.Thread(target=load, name="gemma3n-load", daemon=True).start()

    def close(self) -> None:
        for cancel in list(self._active):
            cancel.set()
        self._worker.shutdown(wait=True, cancel_futures=True)

    async def generate(self, request: GenerationRequest, cancel: threading.Event) -> AsyncIterator:
        """Events of one request: Ready or an ApiError first, then text pieces, then Finished.
        Closing this iterator (a client gone) cancels the generation."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def emit(event) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:    # the event loop is gone (shutdown): nobody is listening
                cancel.set()

        self._active.add(cancel)
        self._worker.submit(self._run, request, cancel, emit)
        try:
            while True:
                event = await queue.get()
                yield event
                if isinstance(event, (Finished, ApiError)):
                    return
        finally:
            cancel.set()
            self._active.discard(cancel)

    # -- on the worker thread ----------------------------------------------------------------------

    def _run(self, request: GenerationRequest, cancel: threading.Event, emit) -> None:
        stats = GenerationStats()
        if cancel.is_set():
            emit(Finished(stats, "cancelled"))
            return
        try:
            tokens = self._start(request, stats, cancel)
        except ApiError as e:
            emit(e)
            return
        except (Gemma3nError, ValueError) as e:
            emit(ApiError(400, str(e)))
            return
        except Exception as e:
            log.exception("preparing a request failed")
            emit(ApiError(500, f"internal error: {type(e).__name__}: {e}"))
            return
        emit(Ready())
        try:
            emit(Finished(stats, self._stream(tokens, request.stop, stats, cancel, emit)))
        except Exception as e:
            log.exception("generation failed")
            emit(ApiError(500, f"generation failed: {type(e).__name__}: {e}"))

    def _start(self, request: GenerationRequest, stats: GenerationStats, cancel: threading.Event):
        model = self.model
        prepared = model.prompt(request.prompt, chat=request.chat)
        if len(prepared) > model.context:
            raise ApiError(400, f"the prompt is {len(prepared)} tokens; the context holds {model.context} "
                                f"(start the server with a larger --context)", "context_length_exceeded",
                           "messages" if request.chat else "prompt")
        max_tokens = request.max_tokens if request.max_tokens is not None else model.context - len(prepared) + 1
        return model.generate_tokens(prepared, max_tokens, stats=stats, cancel=cancel, **request.sampling)

    def _stream(self, tokens, stops: tuple[str, ...], stats: GenerationStats, cancel: threading.Event,
                emit) -> str:
        """Text pieces to `emit` until the model stops, a stop string comes, or cancel; the finish reason."""
        pieces = self.model.text(tokens)
        cut = StopText(stops)
        try:
            for piece in pieces:    # a set `cancel` ends generation before the next token
                text, hit = cut.push(piece)
                if text:
                    emit(text)
                if hit:
                    stats.stop_reason = "stop string"
                    return "stop"
        finally:
            pieces.close()      # ends generation and frees the model
        tail = cut.flush()
        if tail:
            emit(tail)
        return stats.finish_reason or "stop"
