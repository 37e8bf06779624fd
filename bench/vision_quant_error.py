"""What int8 vision weights cost in accuracy, on the tiny random Gemma3nForConditionalGeneration of
tests/mm_reference.py: the soft tokens' relative error (int8 and fp32 encoder graphs vs
transformers), and greedy agreement: transformers' own decoder generating 16 tokens from a
one-image prompt, fed the fp32 graph's soft tokens vs the int8 graph's.

    python bench/vision_quant_error.py [--images 4] [--tokens 16] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    import torch
    from PIL import Image

    import mm_reference as mm
    from exporters.checkpoint import Checkpoint
    from exporters.vision import vision_part
    from gemma3n_rt.bundle import Bundle
    from gemma3n_rt.config import VisionConfig
    from gemma3n_rt.vision import VisionEncoder, preprocess
    from test_vision import scene

    model = mm.reference_mm_model(mm.tiny_mm_config(), a.seed)
    sizes = [(640, 480), (2048, 512), (500, 800), (1024, 1024), (300, 200), (1600, 900)]
    pictures = [Image.fromarray(scene(*sizes[i % len(sizes)], seed=100 + i)) for i in range(a.images)]
    pixels = np.stack([preprocess(pic, 768) for pic in pictures])
    reference = mm.reference_soft_embeddings(model, pixels)
    soft = {}
    with tempfile.TemporaryDirectory() as work:
        mm.save_multimodal_checkpoint(model, os.path.join(work, "ckpt"))
        for quant in ("fp32", "int8"):
            out = os.path.join(work, quant)
            fragment = vision_part(Checkpoint(os.path.join(work, "ckpt")), quant).write(out, False)["vision"]
            bundle = Bundle(out, {}, None, (), None, None, "", VisionConfig.from_dict(fragment), None)
            soft[quant] = VisionEncoder(bundle, threads=2).encode(pixels)

    def rel(x, y):
        return float(np.linalg.norm(x - y) / np.linalg.norm(y))

    prompt = [2, 4, 300, 301, 302, 10, 6] + [mm.IMAGE_TOKEN] * 256 + [mm.EOI, 10, 400, 401, 5, 10, 4, 500, 10]
    original = model.model.get_image_features
    greedy = {}
    for quant in ("fp32", "int8"):
        greedy[quant] = []
        for i in range(a.images):
            def features(pixel_values, _soft=soft[quant][i:i + 1], **kw):
                out = original(pixel_values, **kw)
                out.pooler_output = torch.from_numpy(_soft)
                return out
            model.model.get_image_features = features
            greedy[quant].append(mm.reference_mm_greedy(model, prompt, a.tokens, pixel_values=pixels[i:i + 1]))
    model.model.get_image_features = original
    reference_ids = [mm.reference_mm_greedy(model, prompt, a.tokens, pixel_values=pixels[i:i + 1])
                     for i in range(a.images)]
    same = [sum(x == y for x, y in zip(f, q)) for f, q in zip(greedy["fp32"], greedy["int8"])]
    first = [next((k for k, (x, y) in enumerate(zip(f, q)) if x != y), a.tokens)
             for f, q in zip(greedy["fp32"], greedy["int8"])]
    print(json.dumps({
        "soft_rel_error_fp32": [round(rel(soft["fp32"][i], reference[i]), 9) for i in range(a.images)],
        "soft_rel_error_int8": [round(rel(soft["int8"][i], reference[i]), 5) for i in range(a.images)],
        "fp32_greedy_equals_reference": greedy["fp32"] == reference_ids,
        "int8_vs_fp32_greedy_same_tokens": f"{sum(same)}/{a.tokens * a.images}",
        "int8_vs_fp32_first_divergence": first,
    }))


if __name__ == "__main__":
    main()
