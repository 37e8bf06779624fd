"""Audio input for Gemma 3n: loading and resampling, 30 s clips, log-mel features, the encoder."""
from .encoder import AudioEncoder
from .features import extract_features, num_frames
from .io import MAX_CLIPS, SAMPLE_RATE, load_audio, split_clips
from .resample import resample

__all__ = ["AudioEncoder", "extract_features", "num_frames", "load_audio", "split_clips", "resample",
           "MAX_CLIPS", "SAMPLE_RATE"]
