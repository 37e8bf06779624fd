"""Real-shape audio encoder cost: Gemma3nAudioConfig defaults (681 M parameters, random weights)
through the exporter's audio part, then seconds to encode 5 s and 30 s of audio and peak memory,
fp32 and int8, each in a fresh process.

Usage: nice python bench/audio_encoder.py [WORKDIR] [--threads 2]
WORKDIR keeps the synthetic checkpoint and the exported encoders (about 2.7 + 2.7 + 0.8 GB)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

SHARD_BYTES = 512 << 20


def write_checkpoint(out: str, seed: int = 0) -> None:
    """config.json + shards of random float32 tower weights (norm scales around 1), one shard in memory at a time."""
    import torch
    from safetensors.numpy import save_file
    from transformers import Gemma3nAudioConfig, Gemma3nTextConfig
    from transformers.models.gemma3n.modeling_gemma3n import Gemma3nAudioEncoder, Gemma3nMultimodalEmbedder

    os.makedirs(out, exist_ok=True)
    audio = Gemma3nAudioConfig()
    with torch.device("meta"):
        modules = (("model.audio_tower.", Gemma3nAudioEncoder(audio)),
                   ("model.embed_audio.", Gemma3nMultimodalEmbedder(audio, Gemma3nTextConfig())))
    rng = np.random.default_rng(seed)
    shard, size, n = {}, 0, 0
    for prefix, module in modules:
        for name, p in module.named_parameters():
            shape = tuple(p.shape)
            if len(shape) == 1:
                value = 1.0 + 0.2 * rng.standard_normal(shape, np.float32)
            else:
                value = rng.standard_normal(shape, np.float32) * np.float32(np.prod(shape[1:]) ** -0.5)
            shard[prefix + name] = value
            size += value.nbytes
            if size >= SHARD_BYTES:
                save_file(shard, os.path.join(out, f"model-{n:05d}.safetensors"))
                shard, size, n = {}, 0, n + 1
    if shard:
        save_file(shard, os.path.join(out, f"model-{n:05d}.safetensors"))
    config = {"model_type": "gemma3n", "audio_config": audio.to_dict(),
              "text_config": {"hidden_size": 2048, "vocab_size": 262400},
              "audio_soft_tokens_per_image": 188, "boa_token_id": 256000, "eoa_token_id": 262272,
              "audio_token_id": 262273}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f)


def export(ckpt: str, out: str, quant: str) -> dict:
    from exporters.audio import audio_part
    from exporters.checkpoint import Checkpoint
    started = time.time()
    part = audio_part(Checkpoint(ckpt), quant)
    fragment = part.write(out, show_progress=False)["audio"]
    fragment["export_seconds"] = round(time.time() - started, 1)
    with open(os.path.join(out, "audio.json"), "w") as f:
        json.dump(fragment, f)
    return fragment


def memory() -> dict:
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmHWM", "RssAnon", "RssFile")}


def encode_run(out: str, threads: int) -> dict:
    """In this (fresh) process: load the encoder, encode 5 s and 30 s clips three times each."""
    from gemma3n_rt.audio import extract_features
    from gemma3n_rt.sessions import create_session
    started = time.time()
    session = create_session(os.path.join(out, "audio/encoder.onnx"), threads)
    result = {"load_seconds": round(time.time() - started, 2)}
    rng = np.random.default_rng(0)
    for seconds in (5, 30):
        features, mask = extract_features((0.1 * rng.standard_normal(seconds * 16000)).astype(np.float32))
        times = []
        for _ in range(3):
            t = time.time()
            emb = session.run(None, {"features": features[None], "mask": mask[None]})[0]
            times.append(time.time() - t)
        np.save(os.path.join(out, f"emb{seconds}.npy"), emb)
        result[f"encode_{seconds}s_seconds"] = [round(x, 3) for x in times]
    result.update(memory())
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir", nargs="?", default="/tmp/gemma3n-audio-bench")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--encode", help=argparse.SUPPRESS)          # internal: run one encoder in this process
    args = ap.parse_args()
    if args.encode:
        print(json.dumps(encode_run(args.encode, args.threads)))
        return
    ckpt = os.path.join(args.workdir, "ckpt")
    if not os.path.isfile(os.path.join(ckpt, "config.json")):
        write_checkpoint(ckpt)
    report = {}
    for quant in ("fp32", "int8"):
        out = os.path.join(args.workdir, quant)
        if not os.path.isfile(os.path.join(out, "audio.json")):
            cmd = [sys.executable, "-c", f"import sys; sys.path.insert(0, {os.path.dirname(HERE)!r}); "
                   f"from bench.audio_encoder import export, memory; import json; "
                   f"f = export({ckpt!r}, {out!r}, {quant!r}); f.update(memory()); print(json.dumps(f))"]
            line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            with open(os.path.join(out, "export.json"), "w") as f:
                f.write(line)
        with open(os.path.join(out, "export.json")) as f:
            exported = json.load(f)
        line = subprocess.run([sys.executable, __file__, "--encode", out, "--threads", str(args.threads)],
                              check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        report[quant] = {"export": {k: exported[k] for k in ("params", "weight_bytes", "export_seconds", "VmHWM")},
                         "encode": json.loads(line)}
    for seconds in (5, 30):
        a = np.load(os.path.join(args.workdir, "fp32", f"emb{seconds}.npy"))
        b = np.load(os.path.join(args.workdir, "int8", f"emb{seconds}.npy"))
        n = {5: 32, 30: 188}[seconds]
        error = np.linalg.norm(a[0, :n] - b[0, :n]) / np.linalg.norm(a[0, :n])
        report[f"int8_vs_fp32_relative_error_{seconds}s"] = float(error)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
