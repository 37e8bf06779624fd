"""OpenAI chat messages to the Model's messages: text, image_url (data: and file:// URLs) and
input_audio parts. Nothing is fetched from the network."""
from __future__ import annotations

import base64
import binascii
import os
from urllib.parse import unquote, urlparse

from .schema import ApiError

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
AUDIO_FORMATS = ("wav", "mp3")


def _b64(data, where: str) -> bytes:
    if not isinstance(data, str):
        raise ApiError(400, f"{where} must be a base64 string")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{where} is not valid base64") from None


def _image(part: dict, where: str) -> dict:
    spec = part.get("image_url")
    url = spec.get("url") if isinstance(spec, dict) else spec
    if not isinstance(url, str):
        raise ApiError(400, f"{where}.image_url must be {{'url': 'data:...' or 'file://...'}}")
    if url.startswith("data:"):
        header, comma, data = url.partition(",")
        if not comma or not header.endswith(";base64"):
            raise ApiError(400, f"{where}.image_url: a data URL must be data:<type>;base64,<data>")
        return {"type": "image", "image": _b64(data, f"{where}.image_url data")}
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ApiError(400, f"{where}.image_url: file:// URLs must name a local path")
        path = unquote(parsed.path)
        if not os.path.isfile(path):
            raise ApiError(400, f"{where}.image_url: {path}: no such file")
        return {"type": "image", "image": path}
    if parsed.scheme in ("http", "https"):
        raise ApiError(400, f"{where}.image_url: this server does not fetch URLs; send the image as a data URL "
                            f"or a file:// path")
    raise ApiError(400, f"{where}.image_url: unsupported URL scheme {parsed.scheme!r:.40} (data: or file://)")


def _audio(part: dict, where: str) -> dict:
    spec = part.get("input_audio")
    if not isinstance(spec, dict):
        raise ApiError(400, f"{where}.input_audio must be {{'data': base64, 'format': 'wav'|'mp3'}}")
    if spec.get("format") not in AUDIO_FORMATS:
        raise ApiError(400, f"{where}.input_audio.format must be one of {', '.join(AUDIO_FORMATS)}, "
                            f"got {spec.get('format')!r:.40}")
    return {"type": "audio", "audio": _b64(spec.get("data"), f"{where}.input_audio.data")}


def _part(part, where: str, role: str) -> dict:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise ApiError(400, f"{where}.text must be a string")
        return {"type": "text", "text": part["text"]}
    if kind in ("image_url", "input_audio"):
        if role != "user":
            raise ApiError(400, f"{where}: {kind} parts go in user messages")
        return _image(part, where) if kind == "image_url" else _audio(part, where)
    raise ApiError(400, f"{where}: unknown content part type {kind!r:.40} (text, image_url or input_audio)")


def convert_messages(messages) -> list[dict]:
    """The Model's messages for OpenAI `messages` (media decoded to bytes or paths, not yet encoded)."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"{where} must be an object with 'role' and 'content'")
        role = ROLES.get(message.get("role"))
        if role is None:
            raise ApiError(400, f"{where}: unknown role {message.get('role')!r:.40} (system, developer, user or "
                                f"assistant)")
        content = message.get("content")
        if isinstance(content, list):
            content = [_part(p, f"{where}.content[{k}]", role) for k, p in enumerate(content)]
        elif not isinstance(content, str):
            raise ApiError(400, f"{where}.content must be a string or a list of parts")
        out.append({"role": role, "content": content})
    return out
