"""The audio encoder graph: one clip's features -> its soft embeddings in the text model's space."""
from __future__ import annotations

import numpy as np

from ..bundle import Bundle
from ..errors import Gemma3nError
from ..sessions import create_session


class AudioEncoder:
    """audio/encoder.onnx: the USM conformer, embed_audio's soft path, and the padding to
    tokens_per_clip rows with the hard embedding the reference uses for masked positions."""

    def __init__(self, bundle: Bundle, threads: int | None = None):
        if bundle.audio is None:
            raise Gemma3nError(f"{bundle.path}: this bundle has no audio encoder (export it with --audio-quant)")
        self.cfg = bundle.audio
        self.session = create_session(bundle.file(self.cfg.encoder), threads)

    def encode(self, features: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """features [T, mel] float32 and mask [T] (True = valid frame) -> [tokens_per_clip, D] float32."""
        if self.session is None:
            raise Gemma3nError("audio encoder: used after close()")
        mel = self.cfg.feature.num_mel_bins
        features = np.asarray(features, np.float32)
        mask = np.asarray(mask, bool)
        if features.ndim != 2 or features.shape[1] != mel or mask.shape != features.shape[:1]:
            raise Gemma3nError(f"audio encoder: expected features [T, {mel}] and mask [T], "
                               f"got {list(features.shape)} and {list(mask.shape)}")
        if features.shape[0] == 0:
            # too short for one frame: one masked frame, so every row is the padding embedding
            features = np.full((1, mel), np.log(self.cfg.feature.mel_floor), np.float32)
            mask = np.zeros(1, bool)
        out = self.session.run(None, {"features": features[None], "mask": mask[None]})[0]
        return out[0]

    def close(self) -> None:
        self.session = None
