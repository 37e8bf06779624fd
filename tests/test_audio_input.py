"""Audio input: features and mask against transformers' Gemma3nAudioFeatureExtractor, resampling,
compressed formats, 30 s clips and the clip cap, and bad or unusual input."""
from __future__ import annotations

import os
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from gemma3n_rt.audio import MAX_CLIPS, extract_features, load_audio, num_frames, resample, split_clips
from gemma3n_rt.audio.features import mel_filters
from gemma3n_rt.config import AudioFeatureConfig
from gemma3n_rt.errors import Gemma3nError

SR = 16_000
CLIP = 30 * SR
RNG_FREQS = np.random.default_rng(7)
FREQS = RNG_FREQS.uniform(100, 6500, 40)     # every mel bin below 6.5 kHz gets energy
PHASES = RNG_FREQS.uniform(0, 2 * np.pi, 40)
AMPS = RNG_FREQS.uniform(0.2, 1.0, 40)


def tones(rate: int, seconds: float) -> np.ndarray:
    """The same band-limited signal (40 tones, 100 Hz - 6.5 kHz) sampled at any rate, float64."""
    t = np.arange(int(round(rate * seconds))) / rate
    return (np.sin(2 * np.pi * FREQS[None] * t[:, None] + PHASES) * AMPS).sum(1) / 50


def noise_and_tone(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    return (0.1 * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def reference_extractor():
    from transformers import Gemma3nAudioFeatureExtractor
    return Gemma3nAudioFeatureExtractor()


@pytest.mark.parametrize("seconds", [0.5, 1, 5, 10, 30, 31])
def test_features_and_mask_equal_reference(reference_extractor, seconds):
    wave = noise_and_tone(seconds, seed=int(seconds * 10))
    ref = reference_extractor(wave, return_tensors="np")
    clip = split_clips(wave, CLIP, 2)[0]      # the reference truncates at 30 s; we split there
    features, mask = extract_features(clip)
    assert features.dtype == np.float32 and mask.dtype == bool
    assert features.shape == ref["input_features"][0].shape
    np.testing.assert_allclose(features, ref["input_features"][0], atol=1e-4, rtol=0)
    np.testing.assert_array_equal(mask, ref["input_features_mask"][0])


def test_batched_reference_mask_matches_padded_clip(reference_extractor):
    """In a batch the shorter clip is padded; its first T frames equal ours for the clip alone, and
    the reference marks valid every frame whose first sample is in the clip: 3 more than the
    clip alone has (the mask's off-by-three), then False."""
    short, long = noise_and_tone(1.003, 1), noise_and_tone(2, 2)
    ref = reference_extractor([short, long], return_tensors="np")
    features, mask = extract_features(short)
    t = len(features)
    np.testing.assert_allclose(ref["input_features"][0][:t], features, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(ref["input_features_mask"][0][:t], mask)
    assert ref["input_features_mask"][0].sum() == -(-len(short) // 160) == t + 3


def test_silence_and_short_clips():
    features, mask = extract_features(np.zeros(SR, np.float32))
    assert features.shape == (num_frames(SR), 128) and mask.all()
    np.testing.assert_allclose(features, np.log(1e-5), rtol=1e-6)       # silence is the mel floor
    for n in (0, 1, 383):                                                # under one 513-sample frame
        features, mask = extract_features(np.zeros(n, np.float32))
        assert features.shape == (0, 128) and mask.shape == (0,)


def test_resampled_stereo_matches_signal_made_at_16k():
    """44.1 kHz stereo (L = 1.25 s, R = 0.75 s, so the down-mix is s) resampled to 16 kHz vs the same
    signal made at 16 kHz. Tolerance: the Kaiser(5) windowed-sinc filter is flat to ~1e-3 in its
    passband (below ~6.8 kHz), so each frame's mel energies agree within 0.5 % of the frame's peak
    and every bin within 4 nats of the peak within 0.01 nats. The four frames at each end (whose
    windows hold the signal's abrupt start or end, which no band-limited filter reproduces) and the
    log of near-empty bins (pure leakage, 1e-5 of the peak) are left out."""
    s44 = tones(44_100, 3)
    wave = load_audio(np.stack([1.25 * s44, 0.75 * s44], axis=1), sample_rate=44_100)
    assert wave.dtype == np.float32 and wave.shape == (3 * SR,)
    ref, _ = extract_features(tones(SR, 3).astype(np.float32))
    got, _ = extract_features(wave)
    ref, got = ref[4:-4], got[4:-4]
    mel_ref, mel_got = np.exp(ref), np.exp(got)
    rel = np.abs(mel_ref - mel_got).max(1) / mel_ref.max(1)
    assert rel.max() < 5e-3, rel.max()
    loud = ref > ref.max(1, keepdims=True) - 4
    assert loud.mean() > 0.3
    assert np.abs(ref - got)[loud].max() < 0.01


def test_resampler_is_streaming_and_rate_exact():
    from gemma3n_rt.audio.resample import Resampler
    x = np.random.default_rng(0).standard_normal(44_100 * 2 + 17)
    whole = resample(x, 44_100, SR)
    r = Resampler(44_100, SR)
    parts = [r.feed(x[i:i + 999]) for i in range(0, len(x), 999)] + [r.finish()]
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-6)
    assert len(whole) == -(-len(x) * SR // 44_100)
    for rate in (8_000, 22_050, 48_000):                 # a tone in the passband survives unchanged
        tone = np.sin(2 * np.pi * 1000 * np.arange(rate) / rate)
        want = np.sin(2 * np.pi * 1000 * np.arange(SR) / SR)
        np.testing.assert_allclose(resample(tone, rate, SR)[800:-800], want[800:-800], atol=3e-3)


def test_compressed_formats_decode_like_the_wav(tmp_path):
    """FLAC is lossless (same 16-bit samples as the WAV); OGG Vorbis and MP3 are lossy, so they must
    keep the length and alignment (no encoder delay left in) and the loud part of the spectrum."""
    rng = np.random.default_rng(3)
    x = (tones(SR, 3) + 0.02 * rng.standard_normal(3 * SR)).astype(np.float32)
    sf.write(tmp_path / "a.wav", x, SR, subtype="PCM_16")
    wav = load_audio(tmp_path / "a.wav")
    fw, _ = extract_features(wav)
    loud = fw > fw.max(1, keepdims=True) - 4
    formats = [("flac", "FLAC", "PCM_16", 0.01, 0.001)]
    available = sf.available_formats()
    if "OGG" in available:
        formats.append(("ogg", "OGG", "VORBIS", 0.1, 0.05))
    if "MP3" in available:
        formats.append(("mp3", "MP3", "MPEG_LAYER_III", 0.3, 0.2))
    for ext, fmt, subtype, loud_tol, rms_tol in formats:
        path = tmp_path / f"a.{ext}"
        sf.write(path, x, SR, format=fmt, subtype=subtype, compression_level=0.0)
        y = load_audio(str(path))
        assert y.shape == wav.shape, ext
        lag = np.argmax(np.correlate(y[:SR], wav[:SR], "full")) - (SR - 1)
        assert lag == 0, (ext, lag)
        assert np.sqrt(np.mean((y - wav) ** 2) / np.mean(wav ** 2)) < rms_tol, ext
        f, _ = extract_features(y)
        assert np.abs(f - fw)[loud].mean() < loud_tol, ext
    assert load_audio((tmp_path / "a.flac").read_bytes()).shape == wav.shape      # bytes work too
    with open(tmp_path / "a.flac", "rb") as fh:
        assert load_audio(fh).shape == wav.shape                                  # and file objects


def test_six_channels_are_averaged(tmp_path):
    rng = np.random.default_rng(4)
    data = rng.uniform(-0.5, 0.5, (SR, 6)).astype(np.float32)
    sf.write(tmp_path / "six.wav", data, SR, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "six.wav"), data.mean(1), atol=1e-7)


def test_numpy_inputs():
    pcm = (np.random.default_rng(5).uniform(-1, 1, 1000) * 32000).astype(np.int16)
    np.testing.assert_allclose(load_audio(pcm, sample_rate=SR), pcm / 32768.0, atol=1e-7)
    assert load_audio(np.zeros(0, np.float32), sample_rate=SR).shape == (0,)
    with pytest.raises(Gemma3nError, match="sample_rate"):
        load_audio(np.zeros(10, np.float32))
    with pytest.raises(Gemma3nError, match="NaN"):
        load_audio(np.array([0.0, np.nan]), sample_rate=SR)
    with pytest.raises(Gemma3nError, match="shape"):
        load_audio(np.zeros((2, 3, 4)), sample_rate=SR)


def test_bad_files(tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + os.urandom(200))
    with pytest.raises(Gemma3nError, match=r"broken\.wav: not an audio file"):
        load_audio(bad)
    with pytest.raises(Gemma3nError, match="not found"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(Gemma3nError, match="not an audio file"):
        load_audio(b"this is text, not sound")
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), SR)
    assert load_audio(tmp_path / "empty.wav").shape == (0,)


def test_clips_split_at_30_seconds_and_the_cap_is_an_error():
    wave = np.arange(70 * SR, dtype=np.float32)
    clips = split_clips(wave, CLIP, max_clips=3)
    assert [len(c) for c in clips] == [CLIP, CLIP, 10 * SR]
    np.testing.assert_array_equal(np.concatenate(clips), wave)
    with pytest.raises(Gemma3nError, match="note.wav: audio longer than 60 s"):
        split_clips(wave, CLIP, max_clips=2, name="note.wav")
    assert [len(c) for c in split_clips(wave[:0], CLIP)] == [0]


def test_two_hour_file_stops_at_the_cap_with_bounded_memory(tmp_path):
    """A 2-hour 8 kHz 16-bit file (115 MB; 460 MB as float32 at 16 kHz): reading stops at the clip
    cap with one error, having held only about the capped audio (8 x 30 s = 31 MB) in memory."""
    path = tmp_path / "two_hours.wav"
    rng = np.random.default_rng(6)
    block = (rng.uniform(-0.3, 0.3, 8_000 * 60)).astype(np.float32)
    with sf.SoundFile(path, "w", samplerate=8_000, channels=1, subtype="PCM_16") as f:
        for _ in range(120):
            f.write(block)
    assert os.path.getsize(path) > 110e6
    tracemalloc.start()
    try:
        with pytest.raises(Gemma3nError, match="two_hours.wav: audio longer than 240 s"):
            load_audio(path, max_samples=MAX_CLIPS * CLIP)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 80e6, peak


def test_mel_filters_shape_and_range():
    fb = mel_filters(AudioFeatureConfig())
    assert fb.shape == (513, 128)
    freqs = np.arange(513) * SR / 1024
    assert fb[freqs < 125].sum() == 0 and fb[freqs > 7600].sum() == 0
