"""The model as several threads and apps use it: a prefix cache that reuses and forgets exactly,
serialised concurrent chats, cancellation, and the checks made on load."""
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

import gemma3n_rt
from gemma3n_rt.config import FULL, SLIDING, CacheSpec
from gemma3n_rt.kvcache import KVCache


def fill(cache: KVCache, keys: list) -> None:
    n = len(keys)
    out = {f"new_{kind}.{c}": np.full((n, 1, 2), len(cache.held), np.float32)
           for c in range(len(cache.specs)) for kind in ("key", "value")}
    cache.append(out, keys)


def test_truncate_keeps_what_a_prefix_needs():
    specs = (CacheSpec(SLIDING, 0), CacheSpec(FULL, 1))
    cache = KVCache(specs, 1, 2, context=64, window=5, chunk=4)    # sliding keeps 4, holds 4 + 4
    fill(cache, [1, 2, 3])
    assert cache.truncate(2) and cache.held == [1, 2] and cache.length == [2, 2]
    fill(cache, [3, 4])
    fill(cache, [5, 6, 7, 8])
    fill(cache, [9])               # the sliding cache slides: it keeps 4 positions, then holds 4..8
    assert cache.length == [5, 9]
    assert not cache.truncate(7)   # position 7 attends to 3..6, and 3 was dropped
    assert cache.held == [1, 2, 3, 4, 5, 6, 7, 8, 9] and cache.length == [5, 9]   # unchanged by the refusal
    assert cache.truncate(8) and cache.length == [4, 8]
    with pytest.raises(ValueError):
        cache.truncate(9)
    cache.reset()
    assert cache.truncate(0) and cache.held == []


def test_feeds_give_a_sliding_cache_only_its_window():
    """A sliding cache feeds its last window - 1 positions (the next position's window) though its
    buffer holds up to a chunk more; a full cache feeds every position. fill() writes each position's
    own index, so the values say which positions were fed."""
    specs = (CacheSpec(SLIDING, 0), CacheSpec(FULL, 1))
    cache = KVCache(specs, 1, 2, context=64, window=5, chunk=4)    # sliding keeps 4, holds 4 + 4
    for n in range(1, 12):
        fill(cache, [n])
        feeds = cache.feeds()
        for kind in ("key", "value"):
            assert feeds[f"past_{kind}.0"][:, 0, 0].tolist() == list(range(max(0, n - 4), n))
            assert feeds[f"past_{kind}.1"][:, 0, 0].tolist() == list(range(n))
    assert cache.length == [7, 11]   # the sliding buffer holds more than it feeds


KV_COMMIT_CHECK = """
import numpy as np
from gemma3n_rt.config import FULL, CacheSpec
from gemma3n_rt.kvcache import KVCache
from gemma3n_rt.memory import rss

rss_anon = lambda: rss()["anon"]
freed = np.ones(30 << 18, np.float32)    # 30 MiB
del freed
n = 1024
dtype = np.dtype(DTYPE)
written = {f"new_{kind}.{c}": np.ones((n, 2, 256), dtype) for c in range(8) for kind in ("key", "value")}
before = rss_anon()
cache = KVCache(tuple(CacheSpec(FULL, c) for c in range(8)), 2, 256, context=4096, window=512, chunk=256, dtype=dtype)
created = rss_anon() - before
cache.append(written, list(range(n)))
print(created, rss_anon() - before, cache.keys[7][n - 1, 1, 255], cache.keys[7][n, 0, 0])
"""


@pytest.mark.parametrize("dtype,mib", [("float32", 32), ("float16", 16)])
def test_kv_cache_commits_memory_only_as_it_fills(dtype, mib):
    """The caches are allocated for the whole context, but commit memory (RssAnon) only as
    positions are written, even after a large buffer was freed: glibc then serves 8 MiB from
    recycled heap memory, which np.zeros clears whole. On E2B at 4096 positions that was 48-110
    MiB more RssAnon right after load. Measured in a fresh process, whose heap holds nothing else."""
    out = subprocess.run([sys.executable, "-c", f"DTYPE = {dtype!r}\n" + KV_COMMIT_CHECK], capture_output=True,
                         text=True, check=True)
    created, filled, last, after = out.stdout.split()
    assert int(created) < 4 << 20                    # 8 caches of 2 x 8 (or 4) MiB, nothing written yet
    assert (mib - 2) << 20 <= int(filled) < (mib + 4) << 20   # the positions written
    assert float(last) == 1 and float(after) == 0


@pytest.fixture(scope="module")
def tiny(export_tiny):
    _, bundle = export_tiny(0, embed_std=1.0)
    return gemma3n_rt.load(str(bundle), context=256, chunk=16)


def test_prefix_reuse_gives_the_same_logits(tiny):
    ids = [2] + list(range(10, 50))
    tiny.decoder.reset()
    fresh = tiny.next_token_logits(ids)
    tiny.next_token_logits(ids[:25] + [7, 8, 9])        # shares 25 positions, then differs
    reused = tiny.next_token_logits(ids)
    assert tiny.decoder.position == len(ids)
    # chunk boundaries differ, so float32 rounding may differ in the last digits
    assert np.max(np.abs(reused - fresh)) / np.max(np.abs(fresh)) < 1e-5


def test_threads_share_one_model(tiny):
    """4 threads x 3 turns, each chat's greedy replies equal the same chat run alone."""
    def run(i: int, out: dict) -> None:
        chat = tiny.chat(system=f"Thread {i}.")
        out[i] = ["".join(chat.send(f"turn {t} of chat {i}", max_new_tokens=5, temperature=0)) for t in range(3)]

    solo: dict = {}
    for i in range(4):
        run(i, solo)
    together: dict = {}
    threads = [threading.Thread(target=run, args=(i, together)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert together == solo


def test_cancel_and_close_leave_the_model_usable(tiny):
    expected = tiny.generate("hello", max_new_tokens=8, temperature=0)
    stop = threading.Event()
    pieces = tiny.stream("hello", max_new_tokens=8, temperature=0, cancel=stop)
    next(pieces, None)
    stop.set()
    "".join(pieces)
    assert tiny.last_stats.stop_reason in ("cancelled", "stop token")
    tokens = tiny.generate_tokens(tiny.prompt("hello"), 8, temperature=0)
    next(tokens)
    tokens.close()                       # an abandoned generation releases the model
    assert tiny.generate("hello", max_new_tokens=8, temperature=0) == expected


def test_nested_generation_in_one_thread_is_an_error(tiny):
    outer = tiny.generate_tokens(tiny.prompt("a"), 4, temperature=0)
    next(outer)
    with pytest.raises(gemma3n_rt.Gemma3nError, match="already generating"):
        tiny.generate("b", max_new_tokens=2)
    outer.close()


def test_load_expands_home_and_checks_arguments(export_tiny, monkeypatch, tmp_path):
    _, bundle = export_tiny(0, embed_std=1.0)
    monkeypatch.setenv("HOME", str(bundle.parent))
    model = gemma3n_rt.load(f"~/{bundle.name}")
    assert model.bundle.path == str(bundle)
    assert model.context == 4096          # the default, within the model's 4096 positions
    monkeypatch.setenv("GEMMA3N_MODEL", f"~/{bundle.name}")
    assert gemma3n_rt.load().bundle.path == str(bundle)
    with pytest.raises(ValueError, match="threads"):
        gemma3n_rt.load(str(bundle), threads=0)


def test_zeroed_weights_are_caught_on_load(export_tiny, tmp_path):
    _, bundle = export_tiny(0, quant="int8", tables="int8", embed_std=1.0)
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    gemma3n_rt.verify(str(copy))                       # intact
    weights = copy / "text" / "weights.bin"
    size = weights.stat().st_size
    graph = next((copy / "text").glob("decoder.*.onnx"))
    with open(graph, "r+b") as f:                      # one flipped byte in a small file
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(gemma3n_rt.Gemma3nError, match=f"{graph.name}: sha256 differs"):
        gemma3n_rt.load(str(copy))
    shutil.copyfile(bundle / "text" / graph.name, graph)
    with open(weights, "r+b") as f:
        f.write(bytes(size))                           # zeroed, same size
    if size > 16 << 20:
        with pytest.raises(gemma3n_rt.Gemma3nError, match="weights.bin: content differs"):
            gemma3n_rt.load(str(copy))
    else:                                              # small files are hashed whole on load
        with pytest.raises(gemma3n_rt.Gemma3nError, match="weights.bin: sha256 differs"):
            gemma3n_rt.load(str(copy))
    with pytest.raises(gemma3n_rt.Gemma3nError, match="weights.bin"):
        gemma3n_rt.verify(str(copy))


def test_a_version_1_bundle_still_loads(export_tiny, tmp_path):
    """Bundles written before images and audio (format version 1: no tower sections, no spot hashes)."""
    import json
    _, bundle = export_tiny(0, embed_std=1.0)
    old = tmp_path / "v1"
    shutil.copytree(bundle, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["format_version"] = 1
    for meta in manifest["files"].values():
        meta.pop("spot_sha256", None)
    (old / "manifest.json").write_text(json.dumps(manifest))
    model = gemma3n_rt.load(str(old), context=64)
    assert model.bundle.vision is None and model.bundle.audio is None
    assert model.generate_ids([2, 10, 11], 4, temperature=0) == \
        gemma3n_rt.load(str(bundle), context=64).generate_ids([2, 10, 11], 4, temperature=0)


def test_a_version_2_bundle_still_loads(export_tiny, tmp_path):
    """Bundles written before the rescored head and fp16 caches (format version 2: no
    quantization.head_rescore or kv_cache)."""
    import json
    _, bundle = export_tiny(0, "int4", "int8", embed_std=1.0, head="int8", kv_cache="fp32")
    old = tmp_path / "v2"
    shutil.copytree(bundle, old)
    manifest = json.loads((old / "manifest.json").read_text())
    assert manifest["format_version"] == 4 and manifest["quantization"].pop("head_rescore") == 0
    assert manifest["quantization"].pop("kv_cache") == "fp32"
    manifest["format_version"] = 2
    (old / "manifest.json").write_text(json.dumps(manifest))
    model = gemma3n_rt.load(str(old), context=64)
    assert model.bundle.quant.head_rescore == 0 and model.bundle.quant.kv_cache == "fp32"
    assert model.generate_ids([2, 10, 11], 4, temperature=0) == \
        gemma3n_rt.load(str(bundle), context=64).generate_ids([2, 10, 11], 4, temperature=0)


def test_default_context_is_the_smaller_of_4096_and_the_models(export_tiny):
    _, bundle = export_tiny(0, embed_std=1.0, max_position_embeddings=1024)
    assert gemma3n_rt.load(str(bundle)).context == 1024


def test_head_rescore_without_a_hidden_output_is_a_one_line_error(export_tiny, tmp_path):
    import json
    from gemma3n_rt.errors import Gemma3nError
    _, bundle = export_tiny(0, "int4", "int8", embed_std=1.0, head="int8")
    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["quantization"]["head_rescore"] = 64      # an int8-head graph: no 'hidden' output
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Gemma3nError, match="no 'hidden' output") as e:
        gemma3n_rt.load(str(bad), context=64)
    assert "\n" not in str(e.value)
