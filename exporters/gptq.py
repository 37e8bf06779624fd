"""GPTQ rounding (Frantar et al., 2022) on fixed int4 grids, for calibrated exports.

Rounding each weight to its nearest level minimises the weights' error; GPTQ minimises the error
of the layer's output over the calibration text instead. The values of W [n, K] are rounded one
input column at a time, and each column's rounding error is subtracted, through the inverse of the
inputs' second moments H = mean(x x^T) (calibrate.py), from the columns not yet rounded. The grids
(scale and zero point per block) are chosen beforehand as without GPTQ (quantize.py). Measured on
the real Gemma 3 270M (mean KL to fp32 of the default export, bench/quality.py): 0.0902 rounded to
nearest, 0.0638 with GPTQ. Before the LM head was calibrated too (0.0915 and 0.0692 then), with
GPTQ's own damping (0.0817), neither of its variants paid: the columns in order of importance
(act-order) 0.0853, each block's grid chosen from its values as the errors before it left them 0.0835.
"""
from __future__ import annotations

import numpy as np

# The moments' diagonal is raised before inverting: by GPTQ_DAMP of each feature's own second
# moment, which shrinks the correlations the error is carried along (1.7k calibration tokens
# estimate them loosely), and by GPTQ_FLOOR of the mean, so that a feature never active keeps the
# matrix invertible. Measured on the real Gemma 3 270M (default recipe before the head was calibrated, mean KL to fp32): without
# GPTQ 0.0915; GPTQ's own damping (0.01 of the mean alone) 0.0817, 0.2 of the mean 0.0715, 1.0 of it
# 0.0736; 0.1 / 0.3 / 1.0 of each feature's own 0.0747 / 0.0695 / 0.0752 (GPTQ in float64 then).
GPTQ_DAMP = 0.3
GPTQ_FLOOR = 0.01
GPTQ_BATCH = 128     # columns whose updates are applied to the rest at once


def gptq_factor(moments: np.ndarray, k_padded: int) -> np.ndarray:
    """The upper Cholesky factor U of H^-1 = U^T U, H the mean x x^T of a linear's input [K, K]
    (calibrate.py), damped, and padded to `k_padded` columns with an identity (padding is exact 0)."""
    k = moments.shape[0]
    h = np.eye(k_padded)
    h[:k, :k] = moments
    h[np.diag_indices(k_padded)] += GPTQ_DAMP * np.diag(h) + GPTQ_FLOOR * np.mean(np.diag(moments))
    return np.linalg.cholesky(np.linalg.inv(h)).T


def gptq_round(w: np.ndarray, scales: np.ndarray, zp: np.ndarray, top: int, u: np.ndarray) -> np.ndarray:
    """The levels [n, blocks, block] (0..top) of w [n, blocks, block] on the grids `scales`, `zp`
    [n, blocks], rounded one column at a time, each column's error, scaled by U (gptq_factor()),
    subtracted from the columns not yet rounded."""
    n, blocks, block = w.shape
    k = blocks * block
    # transposed, so that a column is a contiguous row; float32, as GPTQ's own code (the levels
    # differ from float64's in about 3 of 100,000 values, ties of the rounding)
    rest = np.ascontiguousarray(w.reshape(n, k).T)
    s_col = np.ascontiguousarray(np.repeat(scales, block, axis=1).T, dtype=np.float32)
    z_col = np.ascontiguousarray(np.repeat(zp, block, axis=1).T, dtype=np.float32)
    u = u.astype(np.float32)
    q = np.empty((k, n), np.float32)
    for a in range(0, k, GPTQ_BATCH):
        b = min(k, a + GPTQ_BATCH)
        cols, errs = rest[a:b].copy(), np.empty((b - a, n), np.float32)
        for i in range(b - a):
            j = a + i
            level = np.clip(np.rint(cols[i] / s_col[j]) + z_col[j], 0, top)
            q[j] = level
            errs[i] = (cols[i] - (level - z_col[j]) * s_col[j]) / u[j, j]
            cols[i + 1:] -= u[j, j + 1:b, None] * errs[i]
        rest[b:] -= u[a:b, b:].T @ errs       # the batch's updates to the later columns, at once
    return q.T.reshape(n, blocks, block)
