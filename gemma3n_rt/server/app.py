"""The Starlette app: OpenAI routes over an Engine, API-key check, body limit, server-sent events,
and one log line per request (no prompt text)."""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from .bridge import Engine, Finished, Ready
from .schema import ApiError, GenerationRequest, chunk, completion, new_id, parse_request, usage

log = logging.getLogger("gemma3n_rt.server")
MAX_BODY = 20 << 20        # bytes of JSON (a few base64 images or a short sound file)
DRAIN_LIMIT = 256 << 20    # a larger body is refused before it is read (bodies in between are read and dropped)


def _log_request(request: Request, status: int, t0: float, rid: str = "-", stats=None, finish: str = "",
                 error: ApiError | None = None) -> None:
    """One line per request: who, what, the outcome and token counts; never the prompt."""
    outcome = (f" prompt={stats.prompt_tokens} cached={stats.cached_tokens} completion={stats.generated_tokens}"
               f" finish={finish}" if stats is not None else "")
    if error is not None:
        outcome += f" error={error.code or error.status}"
    client = f"{request.client.host}:{request.client.port}" if request.client else "-"
    log.info("%s %s %s %d %s%s %.3fs", client, request.method, request.url.path, status, rid, outcome,
             time.perf_counter() - t0)


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > DRAIN_LIMIT:
        raise ApiError(413, f"the request body is {declared} bytes; the limit is {MAX_BODY}", "request_too_large")
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size <= MAX_BODY:
            parts.append(part)
        elif size > DRAIN_LIMIT:
            break
        else:
            parts.clear()    # read the rest and drop it, so the client gets to see the answer
    if size > MAX_BODY:
        raise ApiError(413, f"the request body is over the limit of {MAX_BODY} bytes", "request_too_large")
    return b"".join(parts)


def _parse(data: bytes, context: int, chat: bool) -> GenerationRequest:
    """The checked request from the body's bytes (run off the event loop: large bodies take a while)."""
    try:
        body = json.loads(data)
    except json.JSONDecodeError as e:
        raise ApiError(400, f"the request body is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})",
                       "invalid_json") from None
    except UnicodeDecodeError:
        raise ApiError(400, "the request body is not UTF-8 JSON", "invalid_json") from None
    return parse_request(body, context, chat)


async def _watch_disconnect(request: Request, cancel: threading.Event) -> None:
    """Set `cancel` when the client goes away (the body has been read by now)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            cancel.set()
            return


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def create_app(engine: Engine, api_key: str | None = None, on_load_failure=lambda e: None) -> Starlette:
    """The app; the model starts loading (in the background) when the server starts."""

    def model_for(request: Request):
        if api_key is not None:
            auth = request.headers.get("authorization", "")
            given = auth[7:] if auth[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                raise ApiError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')", "invalid_api_key")
        if engine.model is None:
            if engine.load_error is not None:
                raise ApiError(503, f"the model failed to load: {engine.load_error}", "model_load_failed")
            raise ApiError(503, "the model is loading; try again shortly", "model_loading")
        return engine.model

    async def health(request: Request) -> JSONResponse:
        if engine.model is None:
            status = "error" if engine.load_error is not None else "loading"
            return JSONResponse({"status": status}, 503)
        return JSONResponse({"status": "ok", "model": engine.model.slice, "context": engine.model.context})

    async def models(request: Request) -> JSONResponse:
        model = model_for(request)
        data = [{"id": s.name, "object": "model", "created": 0, "owned_by": "gemma3n-rt",
                 "effective_parameters": s.effective_params, "loaded": s.name == model.slice}
                for s in model.bundle.slices]
        return JSONResponse({"object": "list", "data": data})

    async def generate(request: Request, chat: bool):
        t0 = time.perf_counter()
        try:
            model = model_for(request)
            req = await asyncio.to_thread(_parse, await _read_body(request), model.context, chat)
        except ApiError as e:
            _log_request(request, e.status, t0, error=e)
            raise
        cancel = threading.Event()
        watcher = asyncio.create_task(_watch_disconnect(request, cancel))
        events = engine.generate(req, cancel)
        rid, name = new_id(chat), model.slice
        streaming = False
        try:
            first = await anext(events)
            if not isinstance(first, Ready):     # refused, or cancelled while queued
                error = first if isinstance(first, ApiError) else ApiError(400, "request cancelled", "cancelled")
                _log_request(request, error.status, t0, rid, error=error)
                raise error
            if req.stream:      # the stream closes the watcher and the events when it ends
                streaming = True
                return StreamingResponse(_stream(request, req, events, watcher, rid, name, t0),
                                         media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
            pieces = []
            async for event in events:
                if isinstance(event, str):
                    pieces.append(event)
                elif isinstance(event, ApiError):
                    _log_request(request, event.status, t0, rid, error=event)
                    raise event
                elif isinstance(event, Finished):
                    _log_finished(request, rid, name, event, t0)
                    use = usage(event.stats.prompt_tokens, event.stats.generated_tokens, event.stats.cached_tokens)
                    return JSONResponse(completion(rid, name, chat, "".join(pieces), event.finish_reason, use))
        finally:
            if not streaming:
                watcher.cancel()
                await events.aclose()

    async def _stream(request: Request, req: GenerationRequest, events, watcher, rid: str, name: str, t0: float):
        chat = req.chat
        try:
            if chat:
                yield _sse(chunk(rid, name, chat, "", role=True, with_usage=req.include_usage))
            async for event in events:
                if isinstance(event, str):
                    yield _sse(chunk(rid, name, chat, event, with_usage=req.include_usage))
                elif isinstance(event, ApiError):
                    _log_request(request, event.status, t0, rid, error=event)
                    yield _sse(event.body())
                    return
                elif isinstance(event, Finished):
                    _log_finished(request, rid, name, event, t0)
                    yield _sse(chunk(rid, name, chat, None if chat else "", finish_reason=event.finish_reason,
                                     with_usage=req.include_usage))
                    if req.include_usage:
                        s = event.stats
                        yield _sse(chunk(rid, name, chat, use=usage(s.prompt_tokens, s.generated_tokens,
                                                                    s.cached_tokens)))
                    yield _sse("[DONE]")
        finally:
            watcher.cancel()
            await events.aclose()

    def _log_finished(request: Request, rid: str, name: str, event: Finished, t0: float) -> None:
        log.info("%s [%s] %s", rid, name, event.stats.summary())
        _log_request(request, 200, t0, rid, event.stats, event.finish_reason)

    async def chat_completions(request: Request):
        return await generate(request, chat=True)

    async def completions(request: Request):
        return await generate(request, chat=False)

    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), e.status)

    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return JSONResponse(ApiError(e.status_code, f"{request.method} {request.url.path}: {e.detail}", code).body(),
                            e.status_code)

    async def internal_error(request: Request, e: Exception) -> JSONResponse:
        log.error("%s %s failed: %s: %s", request.method, request.url.path, type(e).__name__, e)
        return JSONResponse(ApiError(500, f"internal error: {type(e).__name__}").body(), 500)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start_loading(on_load_failure)
        yield
        engine.close()

    routes = [Route("/health", health, methods=["GET"]),
              Route("/v1/models", models, methods=["GET"]),
              Route("/v1/chat/completions", chat_completions, methods=["POST"]),
              Route("/v1/completions", completions, methods=["POST"])]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={ApiError: api_error, HTTPException: http_error,
                                         Exception: internal_error})
