"""Write assets/sample.jpg, the demo's sample image: a small drawn landscape (sky, sun, hills, a
house), made here so the project ships no third-party picture.

Usage: python assets/make_sample_image.py [OUT]"""
from __future__ import annotations

import os
import sys

import numpy as np
from PIL import Image, ImageDraw


def sample_image(width: int = 480, height: int = 320) -> Image.Image:
    y = np.linspace(0, 1, height)[:, None, None]
    sky = (np.array([90, 150, 230]) * (1 - y) + np.array([200, 225, 250]) * y).astype(np.uint8)
    image = Image.fromarray(np.broadcast_to(sky, (height, width, 3)).copy())
    draw = ImageDraw.Draw(image)
    draw.ellipse((360, 30, 430, 100), fill=(255, 214, 80))
    draw.polygon([(0, 230), (140, 150), (300, 240), (480, 170), (480, 320), (0, 320)], fill=(70, 140, 70))
    draw.rectangle((120, 200, 200, 260), fill=(180, 80, 60))
    draw.polygon([(110, 200), (160, 160), (210, 200)], fill=(110, 50, 40))
    draw.rectangle((150, 225, 170, 260), fill=(60, 40, 30))
    return image


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample.jpg")
    sample_image().save(out, quality=85)
    print(f"wrote {out} ({os.path.getsize(out)} bytes)")
