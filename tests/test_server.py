"""gemma3n-serve on the demo bundle: the official openai client against a server started here on a
free loopback port, compared with Model.generate; the prompt cache, queued concurrent streams,
bad requests, the API key, loading, and a client that goes away mid-stream."""
import base64
import hashlib
import http.client
import io
import json
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

import gemma3n_rt
from gemma3n_rt.bundle import Bundle
from gemma3n_rt.errors import Gemma3nError
from gemma3n_rt.media import MediaEncoders
from gemma3n_rt.model import demo_bundle_path
from gemma3n_rt.prompt import Media
from gemma3n_rt.server import Engine, create_app
from gemma3n_rt.server.bridge import StopText

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


@pytest.mark.parametrize("stream", [False, True])
def test_chat_greedy_text_equals_model_generate(server, reference, stream):
    expected = reference.generate(MESSAGES, max_new_tokens=8, **GREEDY)
    text, finish, use = chat_text(server.client(), MESSAGES, stream, max_tokens=8, **GREEDY)
    assert text == expected and finish == "length"
    assert use.completion_tokens == 8 and use.prompt_tokens == len(reference.prompt(MESSAGES))
    assert use.total_tokens == use.prompt_tokens + 8


def test_chat_sampling_with_seed_equals_model_generate(server, reference):
    settings = dict(temperature=0.8, top_p=0.9, seed=3)
    expected = reference.generate(MESSAGES, max_new_tokens=8, top_k=64, **settings)   # the server's default top_k
    text, _, _ = chat_text(server.client(), MESSAGES, max_completion_tokens=8, **settings)
    assert text == expected


@pytest.mark.parametrize("stream", [False, True])
def test_plain_completion_equals_model_generate(server, reference, stream):
    expected = reference.generate("Once upon a time", max_new_tokens=6, chat=False, **GREEDY)
    r = server.client().completions.create(model="E4B", prompt="Once upon a time", max_tokens=6, stream=stream,
                                           **GREEDY)
    chunks = list(r) if stream else [r]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert chunks[-1].choices[0].finish_reason == "length"


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_cuts_the_text(server, reference, stream):
    full = reference.generate(MESSAGES, max_new_tokens=12, **GREEDY)
    stop = full[6:9]
    assert len(stop) == 3
    text, finish, use = chat_text(server.client(), MESSAGES, stream, max_tokens=12, stop=[stop, "\x00never"],
                                  **GREEDY)
    assert text == full[:full.find(stop)] and finish == "stop" and use.completion_tokens < 12


def test_follow_up_turn_reuses_the_cache_and_gives_the_same_text(server):
    client = server.client()
    first = [{"role": "user", "content": "Name a colour."}]
    reply, _, _ = chat_text(client, first, max_tokens=6, **GREEDY)
    follow = first + [{"role": "assistant", "content": reply}, {"role": "user", "content": "And another?"}]
    text, _, use = chat_text(client, follow, max_tokens=6, **GREEDY)
    fresh = load_demo()       # nothing cached
    assert use.prompt_tokens_details.cached_tokens >= len(fresh.prompt(first)) - 1
    assert text == fresh.generate(follow, max_new_tokens=6, **GREEDY)
    with serve(load_demo) as cold:
        cold_text, _, cold_use = chat_text(cold.client(), follow, max_tokens=6, **GREEDY)
    assert cold_use.prompt_tokens_details.cached_tokens == 0 and cold_text == text


def test_four_concurrent_streams_each_get_their_own_completion(server, reference):
    prompts = ["Tell me about cats.", "What is two plus two?", "Write a haiku.", "Hello there!"]
    solo = [reference.generate(p, max_new_tokens=8, **GREEDY) for p in prompts]

    def ask(prompt):
        return chat_text(server.client(), [{"role": "user", "content": prompt}], stream=True, max_tokens=8, **GREEDY)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(ask, prompts))
    assert [r[0] for r in results] == solo
    assert all(r[1] == "length" and r[2].completion_tokens == 8 for r in results)


def test_models_and_health(server, reference):
    status, body = server.get("/v1/models")
    assert status == 200
    assert [m["id"] for m in body["data"]] == reference.slices
    assert [m["id"] for m in body["data"] if m["loaded"]] == [server.engine.model.slice]
    assert server.get("/health") == (200, {"status": "ok", "model": server.engine.model.slice, "context": CONTEXT})


def _image_part(url):
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                        {"type": "text", "text": "What is this?"}]}


def _audio_part(data: bytes, fmt="wav"):
    return {"role": "user", "content": [{"type": "input_audio", "input_audio": {
        "data": base64.b64encode(data).decode(), "format": fmt}}, {"type": "text", "text": "Transcribe."}]}


BAD_REQUESTS = {
    "malformed JSON": ("/v1/chat/completions", b'{"messages": [', 400, "not valid JSON"),
    "body not an object": ("/v1/chat/completions", b"[1, 2]", 400, "JSON object"),
    "unknown role": ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]}, 400, "unknown role"),
    "unknown part type": ("/v1/chat/completions",
                          {"messages": [{"role": "user", "content": [{"type": "video", "video": "x"}]}]},
                          400, "unknown content part type"),
    "roles out of order": ("/v1/chat/completions", {"messages": [{"role": "assistant", "content": "x"}]},
                           400, "alternate"),
    "max_tokens 0": ("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 0}, 400, "max_tokens"),
    "max_tokens over the context": ("/v1/completions", {"prompt": "x", "max_tokens": 10 ** 9}, 400, "max_tokens"),
    "temperature below 0": ("/v1/chat/completions", {"messages": MESSAGES, "temperature": -1}, 400, "temperature"),
    "corrupt base64 image": ("/v1/chat/completions", {"messages": [_image_part("data:image/png;base64,@@not base64")]},
                             400, "not valid base64"),
    "audio format": ("/v1/chat/completions", {"messages": [_audio_part(b"RIFF", "flac")]}, 400, "wav, mp3"),
    "corrupt base64 audio": ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "%%%", "format": "wav"}}]}]}, 400, "not valid base64"),
    "network image URL": ("/v1/chat/completions", {"messages": [_image_part("https://example.com/cat.png")]},
                          400, "does not fetch"),
    "missing image file": ("/v1/chat/completions", {"messages": [_image_part("file:///nonexistent/cat.png")]},
                           400, "no such file"),
    "prompt over the context": ("/v1/chat/completions",
                                {"messages": [{"role": "user", "content": "word " * (2 * CONTEXT)}]},
                                400, f"context holds {CONTEXT}"),
    "n over 1": ("/v1/chat/completions", {"messages": MESSAGES, "n": 2}, 400, "'n'"),
    "echo": ("/v1/completions", {"prompt": "x", "echo": True}, 400, "'echo'"),
    "top_k negative": ("/v1/chat/completions", {"messages": MESSAGES, "top_k": -1}, 400, "top_k"),
    "50 MB body": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * (50 << 20)}]},
                   413, "limit"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_an_error_body_and_the_server_keeps_serving(server, case):
    path, body, status, words = BAD_REQUESTS[case]
    got, reply = server.post(path, body if isinstance(body, bytes) else json.dumps(body).encode())
    assert got == status, reply
    error = reply["error"]
    assert words in error["message"] and error["type"] == "invalid_request_error" and "code" in error
    r = server.client().chat.completions.create(model="E4B", messages=MESSAGES, max_tokens=2, **GREEDY)
    assert r.usage.completion_tokens == 2


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


@pytest.fixture(scope="module")
def towerless_bundle(tmp_path_factory):
    """The demo without any image or audio encoder (as it is until towers are exported into it)."""
    src = demo_bundle_path()
    out = tmp_path_factory.mktemp("towerless") / "bundle"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("vision", "audio"))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.pop("vision", None)
    manifest.pop("audio", None)
    manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith(("vision/", "audio/"))}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return str(out)


def test_media_parts_to_a_bundle_without_encoders_get_400_naming_the_problem(towerless_bundle, tmp_path):
    (tmp_path / "cat.png").write_bytes(png(0))
    cases = [(_image_part("data:image/png;base64," + base64.b64encode(png(0)).decode()), "no image encoder"),
             (_image_part((tmp_path / "cat.png").as_uri()), "no image encoder"),
             (_audio_part(wav(0)), "no audio encoder")]
    with serve(lambda: gemma3n_rt.load(towerless_bundle, context=CONTEXT)) as plain:
        for message, words in cases:
            status, reply = plain.post("/v1/chat/completions", json.dumps({"messages": [message]}).encode())
            message = reply["error"]["message"]
            assert status == 400 and words in message and towerless_bundle in message
        assert chat_text(plain.client(), MESSAGES, max_tokens=2, **GREEDY)[2].completion_tokens == 2


class BytesMedia(MediaEncoders):
    """Stands in for the encoders on a bundle without towers: each image or sound becomes a block
    of soft embeddings drawn from a hash of its bytes, so the model sees exactly what was sent."""

    def __init__(self, model, tokens=5):
        super().__init__(model.bundle)
        self.width, self.tokens, self.seen = model.bundle.text.hidden_size, tokens, []
        self.text_vocab, self.piece = model.tokenizer.vocab_size, model.tokenizer.piece_id

    def _block(self, kind: str, source) -> Media:
        data = source if isinstance(source, bytes) else open(source, "rb").read()
        self.seen.append((kind, data))
        digest = hashlib.sha256(data).digest()
        embeds = np.random.default_rng(list(digest)).standard_normal((self.tokens, self.width)).astype(np.float32)
        soft = self.text_vocab + (kind == "audio")      # ids past the text pieces, not shown as text
        return Media(kind, embeds, self.piece(f"<start_of_{kind}>"), self.piece(f"<end_of_{kind}>"), soft,
                     digest.hex())

    def images(self, sources):
        return [self._block("image", s) for s in sources]

    def clips(self, source):
        return [self._block("audio", source)]


@pytest.fixture
def stub_media(server, reference):
    """BytesMedia in the served model and in the reference model, for the length of one test."""
    served, kept = server.engine.model, (server.engine.model.media, reference.media)
    served.media, reference.media = BytesMedia(served), BytesMedia(reference)
    yield served.media
    served.media, reference.media = kept


def test_image_and_audio_parts_reach_the_model_as_sent(server, reference, stub_media, tmp_path):
    """data: URLs, file:// paths and input_audio deliver the same bytes as Model.generate gets,
    and give the same text."""
    (tmp_path / "b.png").write_bytes(png(2))
    ask = lambda message: chat_text(server.client(), [message], max_tokens=8, **GREEDY)[0]
    model_text = lambda content: reference.generate([{"role": "user", "content": content}], max_new_tokens=8,
                                                    **GREEDY)
    a = ask(_image_part("data:image/png;base64," + base64.b64encode(png(1)).decode()))
    b = ask(_image_part((tmp_path / "b.png").as_uri()))
    c = ask(_audio_part(wav(3)))
    assert stub_media.seen == [("image", png(1)), ("image", png(2)), ("audio", wav(3))]
    assert a == model_text([{"type": "image", "image": png(1)}, {"type": "text", "text": "What is this?"}])
    assert b == model_text([{"type": "image", "image": str(tmp_path / "b.png")},
                            {"type": "text", "text": "What is this?"}])
    assert c == model_text([{"type": "audio", "audio": wav(3)}, {"type": "text", "text": "Transcribe."}])
    assert len({a, b}) == 2      # the picture changes the answer


DEMO_TOWERS = Bundle.open(demo_bundle_path())


@pytest.mark.skipif(DEMO_TOWERS.vision is None, reason="the demo bundle has no image encoder yet")
def test_image_end_to_end_equals_model_generate(server, reference):
    content = [{"type": "text", "text": "What is this?"}]
    text = chat_text(server.client(), [_image_part("data:image/png;base64," + base64.b64encode(png(4)).decode())],
                     max_tokens=6, **GREEDY)[0]
    assert text == reference.generate([{"role": "user", "content": [{"type": "image", "image": png(4)}] + content}],
                                      max_new_tokens=6, **GREEDY)


@pytest.mark.skipif(DEMO_TOWERS.audio is None, reason="the demo bundle has no audio encoder yet")
def test_audio_end_to_end_equals_model_generate(server, reference):
    text = chat_text(server.client(), [_audio_part(wav(5))], max_tokens=6, **GREEDY)[0]
    content = [{"type": "audio", "audio": wav(5)}, {"type": "text", "text": "Transcribe."}]
    assert text == reference.generate([{"role": "user", "content": content}], max_new_tokens=6, **GREEDY)


def test_an_internal_failure_is_a_500_and_the_server_keeps_serving(server, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(server.engine.model, "prompt", broken)
    status, reply = server.post("/v1/chat/completions", json.dumps({"messages": MESSAGES}).encode())
    assert status == 500 and reply["error"]["type"] == "server_error" and "disk on fire" in reply["error"]["message"]
    monkeypatch.undo()
    assert chat_text(server.client(), MESSAGES, max_tokens=2, **GREEDY)[2].completion_tokens == 2


def test_openai_client_sees_the_error(server):
    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(model="E4B", messages=[{"role": "user", "content": "x"}],
                                                max_tokens=0)
    assert e.value.status_code == 400 and "max_tokens" in str(e.value)


def test_api_key():
    with serve(load_demo, api_key="s3cret") as keyed:
        for key in ("none", "s3cret-not"):
            with pytest.raises(openai.AuthenticationError) as e:
                keyed.client(api_key=key).models.list()
            assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
        status, body = keyed.post("/v1/chat/completions", json.dumps({"messages": MESSAGES}).encode())
        assert status == 401 and body["error"]["type"] == "authentication_error"
        assert keyed.get("/health")[0] == 200       # health needs no key
        text, _, _ = chat_text(keyed.client(api_key="s3cret"), MESSAGES, max_tokens=2, **GREEDY)
        assert text


def test_503_while_the_model_loads():
    gate = threading.Event()

    def slow_load():
        assert gate.wait(60)
        return load_demo()

    with serve(slow_load, wait_loaded=False) as loading:
        status, body = loading.post("/v1/chat/completions", json.dumps({"messages": MESSAGES}).encode())
        assert status == 503 and body["error"]["code"] == "model_loading"
        assert loading.get("/health") == (503, {"status": "loading"})
        gate.set()
        assert loading.engine.loaded.wait(60)
        assert chat_text(loading.client(), MESSAGES, max_tokens=2, **GREEDY)[2].completion_tokens == 2


def test_a_model_that_fails_to_load_answers_503_with_the_reason():
    def broken():
        raise Gemma3nError("/nowhere: bundle directory not found")

    with serve(broken) as failed:
        status, body = failed.get("/v1/models")
        assert status == 503 and "bundle directory not found" in body["error"]["message"]
        assert failed.get("/health") == (503, {"status": "error"})


def _open_stream(server, max_tokens=200) -> http.client.HTTPConnection:
    """A streaming chat request that has started generating."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    body = {"messages": [{"role": "user", "content": "Talk for a long time."}], "max_tokens": max_tokens,
            "stream": True, **GREEDY}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    data_lines = 0
    for _ in range(50):
        data_lines += resp.readline().startswith(b"data: ")
        if data_lines == 3:
            return conn
    raise AssertionError("the stream did not start")


def _hang_up(conn: http.client.HTTPConnection) -> None:
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()


def test_client_disconnect_mid_stream_stops_its_generation(server):
    model = server.engine.model
    _hang_up(_open_stream(server))
    deadline = time.monotonic() + 30
    while model.last_stats.stop_reason != "cancelled" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert model.last_stats.stop_reason == "cancelled" and model.last_stats.generated_tokens < 200
    t0 = time.monotonic()
    assert chat_text(server.client(), MESSAGES, max_tokens=2, **GREEDY)[2].completion_tokens == 2
    assert time.monotonic() - t0 < 5


def test_a_queued_request_whose_client_left_is_skipped(server, caplog):
    caplog.set_level(logging.INFO, logger="gemma3n_rt.server")
    generating = _open_stream(server)
    waiting = socket.create_connection((server.host, server.port))
    body = json.dumps({"messages": MESSAGES, "max_tokens": 50}).encode()
    waiting.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    time.sleep(0.5)     # the request is read and queued behind the stream
    waiting.close()
    time.sleep(0.5)
    _hang_up(generating)
    skipped = lambda: [r for r in caplog.records if "error=cancelled" in r.getMessage()]
    deadline = time.monotonic() + 30
    while not skipped() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(skipped()) == 1 and "POST /v1/chat/completions 400" in skipped()[0].getMessage()
    assert chat_text(server.client(), MESSAGES, max_tokens=2, **GREEDY)[2].completion_tokens == 2


def test_stop_text_holds_back_a_possible_stop_string():
    cut = StopText(("END", "xy"))
    assert cut.push("abcE") == ("abc", False)
    assert cut.push("Nd") == ("ENd", False)
    assert cut.push("x") == ("", False)
    assert cut.push("zEN") == ("xz", False)
    assert cut.push("D tail") == ("", True)
    assert StopText(()).push("all of it") == ("all of it", False)


def test_cli_exits_with_one_line_when_the_port_is_taken():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    try:
        run = subprocess.run([sys.executable, "-m", "gemma3n_rt.server.cli", "--port", str(taken.getsockname()[1])],
                             capture_output=True, text=True, timeout=60, env=env)
    finally:
        taken.close()
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith("gemma3n-serve: error: cannot listen on 127.0.0.1:")


def test_cli_exits_with_one_line_when_the_bundle_is_missing(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    run = subprocess.run([sys.executable, "-m", "gemma3n_rt.server.cli", "--port", "0", "--model",
                          str(tmp_path / "missing")], capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 2
    last = run.stderr.strip().splitlines()[-1]
    assert last == f"gemma3n-serve: error: {tmp_path / 'missing'}: bundle directory not found"


def test_cli_serves_on_the_port_it_reports(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    proc = subprocess.Popen([sys.executable, "-m", "gemma3n_rt.server.cli", "--port", "0", "--context", "128",
                             "--threads", "1", "--api-key", "k"], stderr=subprocess.PIPE, text=True, env=env)
    lines = queue.Queue()
    log_lines = []

    def read_log():
        for line in proc.stderr:
            log_lines.append(line)
            lines.put(line)

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    try:
        url = None
        while url is None:
            line = lines.get(timeout=60)
            if "listening on http://127.0.0.1:" in line:
                url = line.split("listening on ")[1].split()[0]
        running = Running(url, None)
        for _ in range(600):
            status, health = running.get("/health")
            if status == 200:
                break
            assert status == 503 and health == {"status": "loading"}
            time.sleep(0.05)
        assert health["context"] == 128
        assert chat_text(running.client(api_key="k"), MESSAGES, max_tokens=2, **GREEDY)[2].completion_tokens == 2
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        reader.join(30)
    err = "".join(log_lines)
    # a graceful shutdown, after which uvicorn re-raises the signal so the exit status tells it
    assert "Finished server process" in err and proc.returncode == -signal.SIGTERM
    assert "POST /v1/chat/completions 200" in err and "Why is the sky" not in err     # no prompt text in the log
