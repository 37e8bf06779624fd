"""Images and audio in a prompt: each source becomes encoded Media blocks, the encoders loaded only
when an image or a clip comes (conditional loading) and released after, unless kept."""
from __future__ import annotations

import contextlib
import hashlib
import time

import numpy as np

from .bundle import Bundle
from .errors import Gemma3nError
from .prompt import Media

IMAGE_KEYS, AUDIO_KEYS = ("image", "url", "path"), ("audio", "url", "path")


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).view(np.uint8)).hexdigest()


def _source(part: dict, keys: tuple[str, ...], where: str):
    for k in keys:
        if part.get(k) is not None:
            return part[k]
    raise ValueError(f"{where} has no source: give one of {', '.join(repr(k) for k in keys)}")


class MediaEncoders:
    def __init__(self, bundle: Bundle, threads: int | None = None, keep_vision: bool = False,
                 keep_audio: bool = False, windowing: bool = False, max_crops: int = 4, max_clips: int = 8):
        if max_crops < 1 or max_clips < 1:
            raise ValueError(f"max_crops and max_clips must be >= 1, got {max_crops} and {max_clips}")
        self.bundle, self.threads = bundle, threads
        self.keep_vision, self.keep_audio = keep_vision, keep_audio
        self.windowing, self.max_crops, self.max_clips = windowing, max_crops, max_clips
        self.vision = self.audio = None    # the encoders, while loaded
        self.seconds = 0.0                 # time spent encoding (loading the encoders included), in total

    def encode_messages(self, messages):
        """`messages` with every image/audio part replaced by {"type": ..., "media": Media}."""
        if not isinstance(messages, list):
            return messages
        out = []
        for i, message in enumerate(messages):
            content = message.get("content") if isinstance(message, dict) else None
            if not isinstance(content, list):
                out.append(message)
                continue
            parts = []
            for k, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                where = f"messages[{i}]['content'][{k}]"
                if kind == "image" and "media" not in part:
                    parts += [{"type": "image", "media": m} for m in self.images([_source(part, IMAGE_KEYS, where)])]
                elif kind == "audio" and "media" not in part:
                    parts += [{"type": "audio", "media": m} for m in self.clips(_source(part, AUDIO_KEYS, where))]
                else:
                    parts.append(part)
            out.append({**message, "content": parts})
        return out

    def images(self, sources) -> list[Media]:
        """One Media block per image (with windowing: the whole image, then its crops)."""
        cfg = self.bundle.vision
        if cfg is None:
            raise Gemma3nError(f"{self.bundle.path}: this bundle has no image encoder (it was exported without "
                               f"the vision tower); re-export a checkpoint that has one")
        from .vision import VisionEncoder, load_image, preprocess, window_crops
        pixels = []
        for src in sources:
            image = load_image(src)
            views = window_crops(image, self.max_crops) if self.windowing else [image]
            pixels += [preprocess(v, cfg.image_size) for v in views]
        with self._encoder("vision", VisionEncoder, self.keep_vision) as encoder:
            soft = [encoder.encode(p[None])[0] for p in pixels]
        return [Media("image", s, cfg.begin_id, cfg.end_id, cfg.soft_id, _digest(p)) for s, p in zip(soft, pixels)]

    def clips(self, source) -> list[Media]:
        """One Media block per 30 s clip of the sound (a path, bytes, or (array, sample_rate))."""
        cfg = self.bundle.audio
        if cfg is None:
            raise Gemma3nError(f"{self.bundle.path}: this bundle has no audio encoder (it was exported without "
                               f"the audio tower); re-export a checkpoint that has one")
        from .audio import AudioEncoder, extract_features, load_audio, split_clips
        limit = cfg.max_samples * self.max_clips      # reading stops there: a long file is never read whole
        if isinstance(source, tuple) and len(source) == 2:
            wave = load_audio(source[0], sample_rate=source[1], max_samples=limit)
        elif isinstance(source, dict) and "array" in source:
            wave = load_audio(source["array"], sample_rate=source.get("sampling_rate"), max_samples=limit)
        else:
            wave = load_audio(source, max_samples=limit)
        clips = split_clips(wave, cfg.max_samples, self.max_clips)
        with self._encoder("audio", AudioEncoder, self.keep_audio) as encoder:
            soft = [encoder.encode(*extract_features(c, cfg.feature)) for c in clips]
        return [Media("audio", s, cfg.begin_id, cfg.end_id, cfg.soft_id, _digest(c)) for s, c in zip(soft, clips)]

    @contextlib.contextmanager
    def _encoder(self, attr: str, make, keep: bool):
        """The encoder in `attr`, created if needed and released after use unless kept; the time
        spent is added to `seconds`."""
        t0 = time.perf_counter()
        if getattr(self, attr) is None:
            setattr(self, attr, make(self.bundle, self.threads))
        try:
            yield getattr(self, attr)
        finally:
            if not keep:
                getattr(self, attr).close()
                setattr(self, attr, None)
            self.seconds += time.perf_counter() - t0
