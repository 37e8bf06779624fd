"""The harness of the server tests: a gemma3n-serve app on a free loopback port (in this process),
the openai client pointed at it, the demo model beside it for reference, and request builders."""
import base64
import http.client
import io
import json
import socket
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

import gemma3n_rt
from gemma3n_rt.server import Engine, create_app


CONTEXT = 512     # room for an image block (258 tokens) and a question
GREEDY = dict(temperature=0)


def load_demo():
    return gemma3n_rt.load(context=CONTEXT)


class Running:
    def __init__(self, url: str, engine: Engine):
        self.url, self.engine = url, engine
        self.host, self.port = url.split("//")[1].split(":")[0], int(url.rsplit(":", 1)[1])

    def client(self, api_key: str = "none", **kwargs) -> "openai.OpenAI":
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=120, **kwargs)

    def post(self, path: str, body: bytes, headers=None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        try:
            conn.request("POST", path, body, {"Content-Type": "application/json", **(headers or {})})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    def get(self, path: str) -> tuple[int, dict]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()


@contextmanager
def serve(loader, api_key=None, wait_loaded=True):
    """The app on uvicorn in a thread, on a free port of 127.0.0.1."""
    engine = Engine(loader)
    server = uvicorn.Server(uvicorn.Config(create_app(engine, api_key), log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=2))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        assert server.started, "the server did not start"
        if wait_loaded:
            assert engine.loaded.wait(60), "the model did not load"
        yield Running(f"http://127.0.0.1:{sock.getsockname()[1]}", engine)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def server():
    with serve(load_demo) as running:
        yield running


@pytest.fixture(scope="module")
def reference():
    """A second Model on the same bundle: what the server's answers must equal."""
    return load_demo()


def chat_text(client, messages, stream=False, **kwargs):
    """(text, finish_reason, usage) from chat.completions.create."""
    if not stream:
        r = client.chat.completions.create(model="E4B", messages=messages, **kwargs)
        return r.choices[0].message.content, r.choices[0].finish_reason, r.usage
    pieces, finish, use = [], None, None
    for c in client.chat.completions.create(model="E4B", messages=messages, stream=True,
                                            stream_options={"include_usage": True}, **kwargs):
        if c.choices:
            pieces.append(c.choices[0].delta.content or "")
            finish = c.choices[0].finish_reason or finish
        if c.usage is not None:
            use = c.usage
    return "".join(pieces), finish, use


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}]

def _image_part(url):
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                        {"type": "text", "text": "What is this?"}]}


def _audio_part(data: bytes, fmt="wav"):
    return {"role": "user", "content": [{"type": "input_audio", "input_audio": {
        "data": base64.b64encode(data).decode(), "format": fmt}}, {"type": "text", "text": "Transcribe."}]}


def png(seed: int, size=(40, 30)) -> bytes:
    from PIL import Image
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def wav(seed: int, seconds=1.0) -> bytes:
    import soundfile
    wave = 0.1 * np.random.default_rng(seed).standard_normal(int(16000 * seconds)).astype(np.float32)
    out = io.BytesIO()
    soundfile.write(out, wave, 16000, format="WAV")
    return out.getvalue()
