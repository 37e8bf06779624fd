"""Log-mel features equal to transformers' Gemma3nAudioFeatureExtractor, in numpy.

The reference's quirks are kept on purpose, because the encoder was trained on them: 513-sample
frames of which the HTK pre-emphasis uses the first 512, a periodic Hann window, a 1024-point FFT
(the "overdrive" doubling) taken as a magnitude, not a power, and a frame mask that is the sample
mask taken every hop and cut to the number of frames (it is 3 longer before the cut)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..config import AudioFeatureConfig


@lru_cache(maxsize=4)
def mel_filters(cfg: AudioFeatureConfig) -> np.ndarray:
    """Triangular HTK-mel filters [fft_length // 2 + 1, num_mel_bins], float64, no area normalisation."""
    n_freqs = cfg.fft_length // 2 + 1
    freqs = np.arange(n_freqs, dtype=np.float32) * (cfg.sample_rate / cfg.fft_length)

    def mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    m_pts = np.linspace(mel(cfg.min_frequency), mel(cfg.max_frequency), cfg.num_mel_bins + 2)
    f_pts = 700.0 * (10 ** (m_pts / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - freqs[:, None]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return np.maximum(0.0, np.minimum(down, up))


@lru_cache(maxsize=4)
def _window(frame_length: int) -> np.ndarray:
    n = np.arange(frame_length, dtype=np.float32)
    return (0.5 * (1 - np.cos(2 * np.pi * n / frame_length))).astype(np.float32)


def num_frames(num_samples: int, cfg: AudioFeatureConfig = AudioFeatureConfig()) -> int:
    """Frames of a clip of `num_samples` samples, after padding to a multiple of pad_to_multiple_of."""
    padded = -(-num_samples // cfg.pad_to_multiple_of) * cfg.pad_to_multiple_of
    return max(0, (padded - (cfg.frame_length + 1)) // cfg.hop_length + 1)


def extract_features(wave: np.ndarray, cfg: AudioFeatureConfig = AudioFeatureConfig()) -> tuple[np.ndarray, np.ndarray]:
    """One mono clip at cfg.sample_rate -> (log-mel features [T, num_mel_bins] float32, valid-frame mask [T] bool).

    A clip too short for one frame (under ~32 ms) gives T = 0."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"extract_features: expected a mono waveform [samples], got shape {list(wave.shape)}")
    n = wave.shape[0]
    padded_len = -(-n // cfg.pad_to_multiple_of) * cfg.pad_to_multiple_of
    padded = np.zeros(padded_len, np.float32)
    padded[:n] = wave
    t = num_frames(n, cfg)
    if t == 0:
        return np.zeros((0, cfg.num_mel_bins), np.float32), np.zeros(0, bool)

    size = cfg.frame_length + 1
    frames = np.lib.stride_tricks.as_strided(padded, shape=(t, size),
                                             strides=(padded.strides[0] * cfg.hop_length, padded.strides[0]))
    # HTK pre-emphasis: the first sample is scaled, not differenced; the 513th sample is unused.
    first = frames[:, :1] * np.float32(1.0 - cfg.preemphasis)
    rest = frames[:, 1:-1] - np.float32(cfg.preemphasis) * frames[:, :-2]
    frames = np.concatenate([first, rest], axis=1) * _window(cfg.frame_length)
    magnitude = np.abs(np.fft.rfft(frames, n=cfg.fft_length, axis=-1))
    mel = magnitude @ mel_filters(cfg)
    features = np.log(np.maximum(mel, cfg.mel_floor)).astype(np.float32)

    sample_mask = np.zeros(padded_len, bool)
    sample_mask[:n] = True
    return features, sample_mask[::cfg.hop_length][:t]
