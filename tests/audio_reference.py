"""A tiny random Gemma 3n audio tower (transformers' Gemma3nAudioEncoder + embed_audio) saved in the
checkpoint layout, and the reference computations the audio tests compare against. Test-only."""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import Gemma3nAudioConfig, Gemma3nTextConfig
from transformers.models.gemma3n.modeling_gemma3n import Gemma3nAudioEncoder, Gemma3nMultimodalEmbedder

TEXT_VOCAB = 262400   # the padding id is text vocab_size - 1 = the last audio id, as in the real model


def tiny_audio_config(hidden=64, layers=2, heads=4, **overrides) -> Gemma3nAudioConfig:
    kw = dict(hidden_size=hidden, conf_num_hidden_layers=layers, conf_num_attention_heads=heads,
              sscp_conv_channel_size=[8, 4])
    kw.update(overrides)
    return Gemma3nAudioConfig(**kw)


def reference_audio(cfg: Gemma3nAudioConfig, text_hidden: int = 48, seed: int = 0):
    """The tower and embed_audio with varied random weights (norm scales around 1, not the init's)."""
    torch.manual_seed(seed)
    text = Gemma3nTextConfig(hidden_size=text_hidden, vocab_size=TEXT_VOCAB)
    tower = Gemma3nAudioEncoder(cfg).eval().float()
    embed = Gemma3nMultimodalEmbedder(cfg, text).eval().float()
    with torch.no_grad():
        for module in (tower, embed):
            for name, p in module.named_parameters():
                if p.ndim == 1:
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))
                else:
                    p.copy_(torch.randn_like(p) * p[0].numel() ** -0.5)
    return tower, embed


def save_audio_checkpoint(tower, embed, out_dir: str, text_hidden: int = 48, preprocessor: dict | None = None) -> None:
    """model.audio_tower.* and model.embed_audio.* tensors with a nested config.json (no text model)."""
    os.makedirs(out_dir, exist_ok=True)
    tensors = {f"model.audio_tower.{k}": v.detach().numpy().copy() for k, v in tower.named_parameters()}
    tensors.update({f"model.embed_audio.{k}": v.detach().numpy().copy() for k, v in embed.named_parameters()})
    save_file(tensors, os.path.join(out_dir, "model.safetensors"))
    config = {"model_type": "gemma3n", "architectures": ["Gemma3nForConditionalGeneration"],
              "text_config": {"hidden_size": text_hidden, "vocab_size": TEXT_VOCAB},
              "audio_config": tower.config.to_dict(), "vision_config": {},
              "audio_soft_tokens_per_image": 188, "boa_token_id": 256000, "eoa_token_id": 262272,
              "audio_token_id": 262273}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f)
    if preprocessor is not None:
        with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
            json.dump(preprocessor, f)


@torch.no_grad()
def reference_soft_embeddings(tower, embed, features: np.ndarray, mask: np.ndarray, tokens: int = 188) -> np.ndarray:
    """What Gemma3nModel.forward scatters into the prompt for a batch of clips: [N, tokens, D]."""
    out = tower(torch.from_numpy(features), ~torch.from_numpy(mask), return_dict=True)
    soft = embed(inputs_embeds=out.last_hidden_state)
    pad = embed(input_ids=torch.tensor([[TEXT_VOCAB - 1]]))
    soft = torch.where(out.audio_mel_mask.unsqueeze(-1), pad, soft)
    extra = pad.expand(soft.shape[0], tokens - soft.shape[1], soft.shape[2])
    return torch.cat([soft, extra], dim=1).numpy()
