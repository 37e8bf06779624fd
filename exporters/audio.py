"""The audio part of the export: Gemma 3n's USM conformer and embed_audio -> audio/encoder.onnx
and audio/hard.safetensors, and the manifest's "audio" section.

The graph takes one or more clips' features [N, T, mel] and their frame mask [N, T] (True = valid)
and returns [N, tokens_per_clip, D]: the tower, embed_audio's soft path, and the reference's merge
step (Gemma3nModel.forward): masked positions, and missing ones up to tokens_per_clip, become the
hard embedding of id text_vocab_size - 1. The model hands the encoder the INVERTED mask (True =
padded); the graph does that inversion itself. torch and transformers are imported only here,
at export time, and only the tower's tensors are read."""
from __future__ import annotations

import json
import math
import os

import numpy as np

from gemma3n_rt.config import AudioConfig, AudioFeatureConfig
from gemma3n_rt.errors import Gemma3nError
from .checkpoint import Lazy, TensorSource
from .writer import write_row_table

TOWER, EMBED = "model.audio_tower.", "model.embed_audio."
TOWER_PATTERN = r"model\.(audio_tower|embed_audio)\..*"
MARKER = TOWER + "subsample_conv_projection.input_proj_linear.weight"
QUANT_MODES = ("fp32", "int8", "none")
INT8_BLOCK = 32
CLIP_SECONDS = 30


def audio_part(ckpt: TensorSource, quant: str) -> "AudioPart | None":
    """Claim the audio tower's tensors, or ignore them (quant "none", or no tower in the checkpoint:
    a stray embed_audio tensor without the conformer is not a tower)."""
    if quant not in QUANT_MODES:
        raise Gemma3nError(f"--audio-quant must be one of {', '.join(QUANT_MODES)}, got {quant!r}")
    if quant == "none" or not ckpt.has(MARKER) or not ckpt.config.get("audio_config"):
        ckpt.ignore(TOWER_PATTERN)
        return None
    return AudioPart(ckpt, quant)


def feature_config(checkpoint_dir: str) -> AudioFeatureConfig:
    """AudioFeatureConfig from the checkpoint's preprocessor_config.json, or the released defaults."""
    path = os.path.join(checkpoint_dir, "preprocessor_config.json")
    if not os.path.isfile(path):
        return AudioFeatureConfig()
    with open(path) as f:
        d = json.load(f)
    d = d.get("feature_extractor", d)
    unsupported = {k: d[k] for k, ok in (("preemphasis_htk_flavor", True), ("fft_overdrive", True), ("dither", 0.0),
                                         ("input_scale_factor", 1.0), ("per_bin_mean", None), ("per_bin_stddev", None))
                   if k in d and d[k] != ok}
    if unsupported:
        raise Gemma3nError(f"{path}: feature-extractor settings the runtime does not implement: {unsupported}")
    sr = int(d.get("sampling_rate", 16_000))
    frame = int(round(sr * float(d.get("frame_length_ms", 32.0)) / 1000.0))
    default = AudioFeatureConfig()
    return AudioFeatureConfig(
        sample_rate=sr, num_mel_bins=int(d.get("feature_size", default.num_mel_bins)), frame_length=frame,
        hop_length=int(round(sr * float(d.get("hop_length_ms", 10.0)) / 1000.0)),
        fft_length=2 * 2 ** math.ceil(math.log2(frame)),
        min_frequency=float(d.get("min_frequency", default.min_frequency)),
        max_frequency=float(d.get("max_frequency", default.max_frequency)),
        preemphasis=float(d.get("preemphasis", default.preemphasis)),
        mel_floor=float(d.get("mel_floor", default.mel_floor)))


def tokens_for_frames(frames: int, audio_config) -> int:
    """Encoder output length for T frames: each SSCP conv halves time (rounding up), then every r-th frame."""
    for (st, _), (kt, _) in zip(audio_config.sscp_conv_stride_size, audio_config.sscp_conv_kernel_size):
        frames = (frames + kt - 1 - kt) // st + 1   # the reference pads time by (0, kt - 1)
    return -(-frames // audio_config.conf_reduction_factor)


class AudioPart:
    def __init__(self, ckpt: TensorSource, quant: str):
        from transformers import Gemma3nAudioConfig, Gemma3nTextConfig
        import torch

        cfg = ckpt.config
        self.ckpt, self.quant = ckpt, quant
        self.audio_config = Gemma3nAudioConfig(**cfg["audio_config"])
        text = cfg.get("text_config", cfg)
        self.text_config = Gemma3nTextConfig(hidden_size=text["hidden_size"], vocab_size=text["vocab_size"])
        self.feature = feature_config(ckpt.dir)
        if self.feature.num_mel_bins != self.audio_config.input_feat_size:
            raise Gemma3nError(f"{ckpt.dir}: the feature extractor makes {self.feature.num_mel_bins} mel bins, "
                               f"the audio tower takes {self.audio_config.input_feat_size}")
        ac = self.audio_config
        # The reference pads with the hard embedding of id text vocab_size - 1 (Gemma3nModel.forward).
        self.pad_row = text["vocab_size"] - 1 - ac.vocab_offset
        if not 0 <= self.pad_row < ac.vocab_size:
            raise Gemma3nError(f"{ckpt.dir}: padding id {text['vocab_size'] - 1} is outside the audio ids "
                               f"[{ac.vocab_offset}, {ac.vocab_offset + ac.vocab_size})")
        self.tokens_per_clip = int(cfg.get("audio_soft_tokens_per_image", 188))
        self.max_samples = CLIP_SECONDS * self.feature.sample_rate
        from gemma3n_rt.audio.features import num_frames
        longest = tokens_for_frames(num_frames(self.max_samples, self.feature), ac)
        if longest > self.tokens_per_clip:
            raise Gemma3nError(f"{ckpt.dir}: a {CLIP_SECONDS} s clip gives {longest} audio tokens, more than "
                               f"audio_soft_tokens_per_image {self.tokens_per_clip}")
        self.ids = {k: int(cfg[k]) for k in ("boa_token_id", "eoa_token_id", "audio_token_id")}
        # Claim every tensor the reference modules hold, with the shapes they expect.
        with torch.device("meta"):
            tower, embed = self._modules()
        self.tensors: dict[str, Lazy] = {}
        for prefix, module in ((TOWER, tower), (EMBED, embed)):
            for name, p in module.named_parameters():
                self.tensors[prefix + name] = ckpt.take(prefix + name, tuple(p.shape))
        self.params = sum(int(np.prod(t.shape)) for t in self.tensors.values())

    def _modules(self):
        from transformers.models.gemma3n.modeling_gemma3n import Gemma3nAudioEncoder, Gemma3nMultimodalEmbedder
        return (Gemma3nAudioEncoder(self.audio_config).eval(),
                Gemma3nMultimodalEmbedder(self.audio_config, self.text_config).eval())

    def load_modules(self):
        """The reference tower and embedder with the checkpoint's weights, float32, copied in one
        tensor at a time (the modules' own buffers, computed at construction, are kept)."""
        import torch
        tower, embed = self._modules()
        with torch.no_grad():
            for prefix, module in ((TOWER, tower), (EMBED, embed)):
                for name, p in module.named_parameters():
                    p.copy_(torch.from_numpy(np.array(self.tensors[prefix + name].load(), np.float32)))
        return tower.float(), embed.float()

    def write(self, tmp_dir: str, show_progress: bool) -> dict:
        import torch
        from .audio_graph import export_encoder

        os.makedirs(os.path.join(tmp_dir, "audio"), exist_ok=True)
        modules = list(self.load_modules())
        tower, embed = modules
        ac = self.audio_config
        with torch.no_grad():
            ids = torch.arange(ac.vocab_offset, ac.vocab_offset + ac.vocab_size)[None]
            hard = embed(input_ids=ids)[0].float().numpy()
        d = hard.shape[1]
        write_row_table(os.path.join(tmp_dir, "audio/hard.safetensors"),
                        Lazy("audio.hard", hard.shape, lambda: hard), groups=1, dtype="fp32")
        del tower, embed
        weight_bytes = export_encoder(modules, hard[self.pad_row], self.tokens_per_clip,
                                      os.path.join(tmp_dir, "audio/encoder.onnx"), self.quant, INT8_BLOCK,
                                      self.feature.num_mel_bins)
        cfg = AudioConfig(
            encoder="audio/encoder.onnx", hard_embeddings="audio/hard.safetensors",
            vocab_offset=ac.vocab_offset, vocab_size=ac.vocab_size, max_samples=self.max_samples,
            tokens_per_clip=self.tokens_per_clip, begin_id=self.ids["boa_token_id"], end_id=self.ids["eoa_token_id"],
            soft_id=self.ids["audio_token_id"], quant=self.quant, weight_bytes=weight_bytes, params=self.params,
            feature=self.feature)
        assert d == self.text_config.hidden_size
        return {"audio": {**cfg.__dict__, "feature": dict(cfg.feature.__dict__)}}
