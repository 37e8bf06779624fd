"""Audio input: files (through soundfile / libsndfile) and numpy arrays -> float32 mono at 16 kHz.

Files are read block by block: each block is down-mixed (channel mean) and resampled before the
next is read, and reading stops at `max_samples`, so a two-hour file is never whole in memory.
Long audio is then cut into consecutive 30 s clips (split_clips), each its own audio block in the
prompt, at most `max_clips` of them: audio longer than that is an error, not silently cut."""
from __future__ import annotations

import io
import os

import numpy as np
import soundfile as sf

from ..errors import Gemma3nError
from .resample import Resampler

SAMPLE_RATE = 16_000
MAX_CLIPS = 8          # 8 x 30 s = 4 minutes, 8 x 188 soft tokens in the prompt
BLOCK_FRAMES = 1 << 16


def _name(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, "name", None) or f"<{type(source).__name__} audio>"


def too_long(name: str, max_samples: int, rate: int = SAMPLE_RATE) -> Gemma3nError:
    return Gemma3nError(f"{name}: audio longer than {max_samples / rate:g} s (the limit is max_clips x 30 s clips; "
                        f"raise max_clips / --max-clips, or trim the audio)")


def _mono_blocks(blocks, rate: int, name: str, max_samples: int | None):
    """Down-mix and resample each block to 16 kHz; stop with an error past max_samples."""
    resampler = Resampler(rate, SAMPLE_RATE) if rate != SAMPLE_RATE else None
    total = 0
    for block in blocks:
        block = np.asarray(block)
        mono = block.mean(axis=1, dtype=np.float64) if block.ndim == 2 else block.astype(np.float64)
        if not np.isfinite(mono).all():
            raise Gemma3nError(f"{name}: audio holds NaN or infinite samples")
        out = resampler.feed(mono) if resampler else mono
        total += len(out)
        if max_samples is not None and total > max_samples:
            raise too_long(name, max_samples)
        yield out.astype(np.float32)
    if resampler:
        out = resampler.finish()
        total += len(out)
        if max_samples is not None and total > max_samples:
            raise too_long(name, max_samples)
        yield out.astype(np.float32)


def _array_blocks(a: np.ndarray, name: str):
    if a.ndim not in (1, 2) or (a.ndim == 2 and a.shape[1] == 0):
        raise Gemma3nError(f"{name}: expected samples [n] or [n, channels], got shape {list(a.shape)}")
    if np.issubdtype(a.dtype, np.integer):
        scale = float(2 ** (8 * a.dtype.itemsize - 1))   # int16 / int32 PCM, as soundfile reads them
        for i in range(0, max(len(a), 1), BLOCK_FRAMES):
            yield a[i:i + BLOCK_FRAMES].astype(np.float64) / scale
    elif np.issubdtype(a.dtype, np.floating):
        for i in range(0, max(len(a), 1), BLOCK_FRAMES):
            yield a[i:i + BLOCK_FRAMES]
    else:
        raise Gemma3nError(f"{name}: expected float or integer samples, got dtype {a.dtype}")


def _open(source, name: str) -> sf.SoundFile:
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        source = os.path.expanduser(os.fspath(source))
        if not os.path.isfile(source):
            raise Gemma3nError(f"{name}: audio file not found")
    try:
        return sf.SoundFile(source)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise Gemma3nError(f"{name}: not an audio file soundfile can read ({reason})") from None


def load_audio(source, sample_rate: int | None = None, max_samples: int | None = None) -> np.ndarray:
    """A file path ('~' ok), bytes, a binary file object, or a numpy array ([n] or [n, channels],
    float in [-1, 1] or integer PCM; then `sample_rate` is required) -> float32 mono at 16 kHz.

    More than `max_samples` output samples is an error (raised as soon as reading passes them)."""
    name = _name(source)
    if isinstance(source, np.ndarray):
        if not sample_rate or sample_rate <= 0:
            raise Gemma3nError(f"{name}: a numpy waveform needs its sample_rate")
        blocks, rate = _array_blocks(source, name), int(sample_rate)
        return _join(_mono_blocks(blocks, rate, name, max_samples))
    if sample_rate is not None:
        raise Gemma3nError(f"{name}: sample_rate is only for numpy arrays (a file states its own rate)")
    with _open(source, name) as f:
        if f.samplerate <= 0 or f.channels <= 0:
            raise Gemma3nError(f"{name}: audio file with {f.channels} channels at {f.samplerate} Hz")
        try:
            blocks = f.blocks(BLOCK_FRAMES, dtype="float32", always_2d=True)
            return _join(_mono_blocks(blocks, f.samplerate, name, max_samples))
        except (sf.LibsndfileError, RuntimeError) as e:
            raise Gemma3nError(f"{name}: audio data is damaged ({str(e).splitlines()[0]})") from None


def _join(blocks) -> np.ndarray:
    parts = list(blocks)
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def split_clips(wave: np.ndarray, max_samples: int, max_clips: int = MAX_CLIPS,
                name: str = "audio") -> list[np.ndarray]:
    """Consecutive clips of at most `max_samples` (the last one shorter); an empty wave is one
    empty clip. More than `max_clips` clips is an error naming `name`."""
    if max_clips < 1:
        raise Gemma3nError(f"max_clips must be at least 1, got {max_clips}")
    if len(wave) > max_samples * max_clips:
        raise too_long(name, max_samples * max_clips)
    return [wave[i:i + max_samples] for i in range(0, len(wave), max_samples)] or [wave[:0]]
