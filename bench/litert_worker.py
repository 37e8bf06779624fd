"""One LiteRT-LM measurement in a fresh process, for bench/run.py `--compare litert-lm`. It runs
under the Python that has `litert-lm` installed (`--litert-python`), so it imports nothing but
the standard library and litert_lm, and prints the same RESULT line as bench/worker.py.

    PYTHON -m bench.litert_worker MODEL.litertlm --prompt 512 --decode 128 --threads 2

It uses LiteRT-LM's own benchmark mode (the engine settings litert_lm.Benchmark sets): the
runtime cuts a prose prompt to exactly --prompt tokens, prefills it, decodes --decode tokens and
reports its own prefill and decode speeds, which are taken as they are.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import time

PROSE = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
         "want of a wife. However little known the feelings or views of such a man may be on his first entering "
         "a neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is "
         "considered as the rightful property of some one or other of their daughters. ")


def run(model: str, prompt: int, decode: int, threads: int) -> dict:
    from litert_lm import _ffi, interfaces
    lib = _ffi._get_lib()
    start = time.perf_counter()
    settings = lib.litert_lm_engine_settings_create(model.encode(), b"cpu", None, None)
    if not settings:
        raise SystemExit(f"{model}: LiteRT-LM could not read it")
    lib.litert_lm_engine_settings_enable_benchmark(settings)
    lib.litert_lm_engine_settings_set_num_threads(settings, threads)
    lib.litert_lm_engine_settings_set_num_prefill_tokens(settings, prompt)
    lib.litert_lm_engine_settings_set_num_decode_tokens(settings, decode)
    engine = lib.litert_lm_engine_create(settings)
    lib.litert_lm_engine_settings_delete(settings)
    session = lib.litert_lm_engine_create_session(engine, None) if engine else None
    if not session:
        raise SystemExit(f"{model}: LiteRT-LM could not create an engine and session")
    ready = time.perf_counter()
    text = (PROSE * (prompt // 40 + 2)).encode()        # more words than tokens: cut to `prompt` by the runtime
    data = lib.litert_lm_input_data_create(_ffi.InputDataType.TEXT, text, len(text))
    try:
        response = lib.litert_lm_session_generate_content(session, (ctypes.c_void_p * 1)(data), 1)
        if response:
            lib.litert_lm_responses_delete(response)
    finally:
        lib.litert_lm_input_data_delete(data)
    done = time.perf_counter()
    info_ptr = lib.litert_lm_session_get_benchmark_info(session)
    info = interfaces.create_benchmark_info(lib, info_ptr)
    lib.litert_lm_benchmark_info_delete(info_ptr)
    lib.litert_lm_session_delete(session)
    lib.litert_lm_engine_delete(engine)
    if info.last_prefill_token_count != prompt:
        raise SystemExit(f"LiteRT-LM prefilled {info.last_prefill_token_count} tokens, not {prompt}")
    ttft = info.time_to_first_token_in_second
    return {"load_s": ready - start, "ttft_s": ttft, "decode_s": info.last_decode_token_count / info.last_decode_tokens_per_second,
            "prefill_tps": info.last_prefill_tokens_per_second, "decode_tps": info.last_decode_tokens_per_second,
            "events": {"ready": ready - start, "first_token": ready - start + ttft, "done": done - start}}


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--decode", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    r = run(a.model, a.prompt, a.decode, a.threads)
    r.update(prompt=a.prompt, decode=a.decode)
    print("RESULT " + json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
