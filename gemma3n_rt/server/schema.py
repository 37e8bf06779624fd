"""OpenAI request checks and response shapes (chat.completion, chat.completion.chunk,
text_completion), and the error body {"error": {"message", "type", "code"}}."""
from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field

# Sampling when a request leaves it unset: Gemma's recommended settings (as gemma3n-run)
DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P = 1.0, 64, 0.95
MAX_STOPS = 4
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               413: "invalid_request_error", 500: "server_error", 503: "unavailable_error"}


class ApiError(Exception):
    """A request the server refuses, with its HTTP status and OpenAI error code."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": ERROR_TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class GenerationRequest:
    """What one request asks of the model, checked."""
    prompt: list[dict] | str        # chat messages (Model parts), or plain text for /v1/completions
    chat: bool
    max_tokens: int | None          # None: until a stop token or the context is full
    sampling: dict = field(default_factory=dict)     # temperature, top_k, top_p, seed
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False


def _int(body: dict, key: str, low: int, high: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ApiError(400, f"'{key}' must be a whole number {bound}, got {value!r:.40}", "invalid_value", key)
    return value


def _number(body: dict, key: str, ok, what: str, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ApiError(400, f"'{key}' must be {what}, got {value!r:.40}", "invalid_value", key)
    return float(value)


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if (not isinstance(stops, list) or not 0 < len(stops) <= MAX_STOPS
            or not all(isinstance(s, str) and s for s in stops)):
        raise ApiError(400, f"'stop' must be a non-empty string or a list of 1 to {MAX_STOPS} of them",
                       "invalid_value", "stop")
    return tuple(stops)


def _unsupported(body: dict) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise ApiError(400, "'n' must be 1: this server generates one choice per request", "invalid_value", "n")
    for key in ("tools", "functions"):
        if body.get(key):
            raise ApiError(400, f"'{key}' (tool calling) is not supported by this server", "unsupported_parameter", key)
    for key in ("logprobs", "echo", "suffix"):
        if body.get(key):
            raise ApiError(400, f"'{key}' is not supported by this server", "unsupported_parameter", key)
    if body.get("best_of") not in (None, 1):
        raise ApiError(400, "'best_of' must be 1: this server generates one choice per request", "invalid_value",
                       "best_of")


def parse_request(body, context: int, chat: bool) -> GenerationRequest:
    """A checked request for /v1/chat/completions (chat=True) or /v1/completions."""
    from .parts import convert_messages
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    _unsupported(body)
    if chat:
        prompt = convert_messages(body.get("messages"))
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "'prompt' must be a string (or a list holding one string)", "invalid_value", "prompt")
    key = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _int(body, key, 1, context)
    if max_tokens is None and not chat:
        max_tokens = 16      # OpenAI's default for completions
    top_k = _int(body, "top_k", 0)      # not in OpenAI's API; llama-server and vLLM take it too
    sampling = dict(temperature=_number(body, "temperature", lambda v: v >= 0, "a number >= 0", DEFAULT_TEMPERATURE),
                    top_p=_number(body, "top_p", lambda v: 0 < v <= 1, "in (0, 1]", DEFAULT_TOP_P),
                    top_k=DEFAULT_TOP_K if top_k is None else top_k, seed=_int(body, "seed", 0))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", "invalid_value", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object", "invalid_value", "stream_options")
    return GenerationRequest(prompt, chat, max_tokens, sampling, _stop(body), stream,
                             bool(options.get("include_usage")))


# -- responses -------------------------------------------------------------------------------------

def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def completion(rid: str, model: str, chat: bool, text: str, finish_reason: str, use: dict) -> dict:
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": finish_reason}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice], "usage": use}


def chunk(rid: str, model: str, chat: bool, text: str | None = None, finish_reason: str | None = None,
          role: bool = False, use: dict | None = None, with_usage: bool = False) -> dict:
    """One streamed chunk: a text delta, the finish reason, or (choices empty) the usage."""
    if use is not None:
        choices = []
    elif chat:
        delta = ({"role": "assistant"} if role else {}) | ({"content": text} if text is not None else {})
        choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    else:
        choices = [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}]
    out = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
           "created": int(time.time()), "model": model, "choices": choices}
    if with_usage or use is not None:
        out["usage"] = use
    return out
