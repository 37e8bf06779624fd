"""gemma3n-serve on the demo bundle: the official openai client against a server started here on a
free loopback port, compared with Model.generate; the prompt cache, queued concurrent streams,
bad requests, the API key, loading, and a client that goes away mid-stream."""
import http.client
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from gemma3n_rt.errors import Gemma3nError
from gemma3n_rt.server.bridge import StopText
from server_harness import (CONTEXT, GREEDY, MESSAGES, Running, _audio_part, _image_part,
                            chat_text, load_demo, serve)
from server_harness import reference, server  # noqa: F401  (pytest fixtures)


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
