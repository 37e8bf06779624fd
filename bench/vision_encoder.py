"""The real-shape vision encoder's cost: timm mobilenetv5_300m_enc (294 M parameters, random
weights) + a real-shape embed_vision, exported through exporters/vision.py as a checkpoint would
be, then run by gemma3n_rt.vision.VisionEncoder. Prints one JSON line per quantization: export
seconds and peak RSS, session creation, seconds per 768 x 768 image, and peak RssAnon / RssFile
while encoding. Each step runs in its own process, so one step's memory does not hide another's.

    python bench/vision_encoder.py [--quant fp32,int8] [--threads 2] [--images 3] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import zlib

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from exporters.checkpoint import Lazy, TensorSource  # noqa: E402

ARCH = "mobilenetv5_300m_enc"
TEXT_HIDDEN = 2048          # E2B and E4B
CONFIG = {"model_type": "gemma3n", "text_config": {"hidden_size": TEXT_HIDDEN},
          "vision_config": {"architecture": ARCH, "hidden_size": 2048, "vocab_size": 128, "vocab_offset": 262144,
                            "rms_norm_eps": 1e-6, "model_args": None},
          "vision_soft_tokens_per_image": 256, "boi_token_id": 255999, "eoi_token_id": 262144,
          "image_token_id": 262145}


class SyntheticVision(TensorSource):
    """The vision tensors of a real-shape checkpoint, each generated (from its name) only when read."""

    def __init__(self):
        super().__init__()
        from exporters.vision import EMBED, TOWER, timm_state_shapes
        self.dir, self.config = "<synthetic vision checkpoint>", CONFIG
        self.shapes = {TOWER + k: s for k, s in timm_state_shapes(ARCH, {}).items()}
        self.shapes.update({EMBED + "embedding.weight": (128, 2048), EMBED + "hard_embedding_norm.weight": (2048,),
                            EMBED + "soft_embedding_norm.weight": (2048,),
                            EMBED + "embedding_projection.weight": (TEXT_HIDDEN, 2048)})

    def names(self):
        return self.shapes.keys()

    def shape(self, name):
        return self.shapes[name]

    def dtype(self, name):
        return "F32"

    def _lazy(self, name, shape):
        def load():
            rng = np.random.default_rng(zlib.crc32(name.encode()))
            if name.endswith("layer_scale.gamma"):
                return np.full(shape, 1e-2, np.float32)
            if len(shape) == 1:
                return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
            fan_in = int(np.prod(shape[1:]))
            return (rng.standard_normal(shape) * fan_in ** -0.5).astype(np.float32)
        return Lazy(name, tuple(shape), load)


def peak_hwm() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def step_export(quant: str, out: str) -> dict:
    from exporters.vision import vision_part
    src = SyntheticVision()
    start = time.time()
    fragment = vision_part(src, quant).write(out, show_progress=False)
    return {"export_s": round(time.time() - start, 1), "export_peak_rss_mib": round(peak_hwm() / 2**20),
            "fragment": fragment["vision"]}


def step_measure(out: str, fragment: dict, threads: int, images: int) -> dict:
    from gemma3n_rt.bundle import Bundle
    from gemma3n_rt.config import VisionConfig
    from gemma3n_rt.memory import rss
    from gemma3n_rt.vision import VisionEncoder
    base = rss()
    peak = dict(base)
    done = threading.Event()

    def sample():
        while not done.wait(0.02):
            now = rss()
            for k in peak:
                peak[k] = max(peak[k], now[k])
    threading.Thread(target=sample, daemon=True).start()
    bundle = Bundle(out, {}, None, (), None, None, "", VisionConfig.from_dict(fragment), None)
    start = time.time()
    encoder = VisionEncoder(bundle, threads=threads)
    create_s = time.time() - start
    loaded = rss()
    pixels = np.random.default_rng(0).random((1, 3, 768, 768), dtype=np.float32)
    encoder.encode(pixels)                                   # first run: allocations, not timed
    times = []
    for _ in range(images):
        start = time.time()
        soft = encoder.encode(pixels)
        times.append(time.time() - start)
    done.set()
    mib = 2**20
    return {"threads": threads, "session_create_s": round(create_s, 2),
            "s_per_image": round(float(np.median(times)), 3),
            "s_per_image_all": [round(t, 3) for t in times], "soft_shape": list(soft.shape),
            "rss_anon_loaded_mib": round((loaded["anon"] - base["anon"]) / mib),
            "peak_rss_anon_mib": round((peak["anon"] - base["anon"]) / mib),
            "peak_rss_file_mib": round((peak["file"] - base["file"]) / mib),
            "weight_mib": round(fragment["weight_bytes"] / mib), "params": fragment["params"]}


def child(args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quant", default="fp32,int8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--images", type=int, default=3)
    p.add_argument("--work", help="directory for the exported encoders (default: a temporary one)")
    p.add_argument("--step", choices=("export", "measure"), help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--fragment", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.step == "export":
        print(json.dumps(step_export(a.quant, a.out)))
        return
    if a.step == "measure":
        print(json.dumps(step_measure(a.out, json.loads(a.fragment), a.threads, a.images)))
        return
    with tempfile.TemporaryDirectory(dir=a.work) as work:
        for quant in a.quant.split(","):
            out = os.path.join(work, quant)
            exported = child(["--step", "export", "--quant", quant, "--out", out])
            measured = child(["--step", "measure", "--out", out, "--fragment", json.dumps(exported["fragment"]),
                              "--threads", str(a.threads), "--images", str(a.images)])
            print(json.dumps({"quant": quant, "export_s": exported["export_s"],
                              "export_peak_rss_mib": exported["export_peak_rss_mib"], **measured}), flush=True)


if __name__ == "__main__":
    main()
