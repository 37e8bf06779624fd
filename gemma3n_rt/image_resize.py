"""Bilinear resize of uint8 RGB images, bit-exact with what the reference image processor does.

Gemma 3n's processor (transformers' SiglipImageProcessor, torchvision backend) resizes the uint8
image with torchvision's `resize(..., BILINEAR, antialias=True)`. On x86 CPUs with AVX2/AVX-512
(and on ARM) that runs PyTorch's uint8 kernel, ported from Pillow-SIMD: per axis, a triangle
filter widened by the downscale factor, weights computed in float64, normalised, then rounded to
int16 at the highest precision that fits; the horizontal pass runs first, each pass rounds and
saturates to uint8. Pillow's own BILINEAR differs from it by one level on some pixels (other
weight precision), so this reimplements the kernel's arithmetic in numpy. (On CPUs without AVX2,
torchvision resizes in float32 instead and rounds once; that variant is not reproduced here.)
"""
from __future__ import annotations

import numpy as np


def axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(first input index [n_out], int weights [n_out, taps], precision bits) for one axis."""
    scale = n_in / n_out
    support = scale if scale >= 1.0 else 1.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    taps = int(np.ceil(support)) * 2 + 1
    centers = scale * (np.arange(n_out) + 0.5)
    first = np.maximum((centers - support + 0.5).astype(np.int64), 0)
    size = np.minimum((centers + support + 0.5).astype(np.int64), n_in) - first
    j = np.arange(taps)
    x = np.abs(((j[None, :] + first[:, None]) - centers[:, None] + 0.5) * invscale)
    w = np.where((j[None, :] < size[:, None]) & (x < 1.0), 1.0 - x, 0.0)
    total = np.zeros(n_out)
    for k in range(taps):            # in order, as the kernel sums (numpy's sum is pairwise)
        total += w[:, k]
    w = np.divide(w, total[:, None], out=w, where=total[:, None] != 0.0)
    w_max = w.max()
    precision = 0
    while precision < 22 and int(0.5 + w_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    return first, np.floor(0.5 + w * float(1 << precision)).astype(np.int32), precision


def _resize_axis(img: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """One pass along `axis` (0: rows, 1: columns) of a uint8 [H, W, C] image."""
    n_in = img.shape[axis]
    first, weights, precision = axis_weights(n_in, n_out)
    src = np.moveaxis(img, axis, 0).astype(np.int32)          # [n_in, other, C]; sums stay < 2**31
    acc = np.full((n_out,) + src.shape[1:], 1 << (precision - 1), np.int32)
    for k in range(weights.shape[1]):
        index = np.minimum(first + k, n_in - 1)               # padded taps have weight 0
        acc += weights[:, k, None, None] * src[index]
    out = np.clip(acc >> precision, 0, 255).astype(np.uint8)
    return np.moveaxis(out, 0, axis)


def resize_bilinear(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [H, W, C] -> uint8 [height, width, C], as torchvision's antialiased uint8 bilinear."""
    if img.dtype != np.uint8 or img.ndim != 3:
        raise ValueError(f"resize_bilinear: expected a uint8 [H, W, C] array, got {img.dtype} {img.shape}")
    if img.shape[1] != width:
        img = _resize_axis(img, width, 1)
    if img.shape[0] != height:
        img = _resize_axis(img, height, 0)
    return np.ascontiguousarray(img)
