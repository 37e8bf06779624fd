"""A tiny random audio tower for the demo checkpoint (make_demo.py calls add_audio_tower before export).

The tower is transformers' Gemma3nAudioEncoder at a toy size with embed_audio; its weights go into
one more shard, listed in the checkpoint's index, and config.json gains audio_config and the
audio token ids. The audio ids must end at the text vocabulary's last id: the reference pads
clips with the hard embedding of id vocab_size - 1 (as 262399 is in the real model)."""
from __future__ import annotations

import json
import os

AUDIO_SHARD = "model-audio.safetensors"


def add_audio_tower(ckpt_dir: str, boa_id: int = 8, audio_vocab: int = 32, seed: int = 0) -> None:
    """Add model.audio_tower.* and model.embed_audio.* to the checkpoint in ckpt_dir.

    Audio ids: [text_vocab - audio_vocab, text_vocab); <end_of_audio> is the first of them,
    <audio_soft_token> the second (as 262272 / 262273 are), <start_of_audio> is boa_id, a text id.
    The defaults are tests/mm_reference.py's: with the demo's 2112 ids, audio is [2080, 2112) (vision
    [2048, 2080) stays free) and <start_of_audio> is the demo tokenizer's control piece 8."""
    import torch
    from safetensors.numpy import save_file
    from transformers import Gemma3nAudioConfig, Gemma3nTextConfig
    from transformers.models.gemma3n.modeling_gemma3n import Gemma3nAudioEncoder, Gemma3nMultimodalEmbedder

    cfg_path = os.path.join(ckpt_dir, "config.json")
    with open(cfg_path) as f:
        config = json.load(f)
    text = config.get("text_config", config)
    offset = text["vocab_size"] - audio_vocab
    audio = Gemma3nAudioConfig(hidden_size=32, conf_num_hidden_layers=1, conf_num_attention_heads=2,
                               sscp_conv_channel_size=[4, 4], vocab_size=audio_vocab, vocab_offset=offset)
    torch.manual_seed(seed)
    tower = Gemma3nAudioEncoder(audio)
    embed = Gemma3nMultimodalEmbedder(audio, Gemma3nTextConfig(hidden_size=text["hidden_size"],
                                                               vocab_size=text["vocab_size"]))
    tensors = {}
    with torch.no_grad():
        for prefix, module in (("model.audio_tower.", tower), ("model.embed_audio.", embed)):
            for name, p in module.named_parameters():
                value = 1.0 + 0.2 * torch.randn_like(p) if p.ndim == 1 else torch.randn_like(p) * p[0].numel() ** -0.5
                tensors[prefix + name] = value.float().numpy()
    save_file(tensors, os.path.join(ckpt_dir, AUDIO_SHARD))
    index = os.path.join(ckpt_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            idx = json.load(f)
        idx["weight_map"].update({name: AUDIO_SHARD for name in tensors})
        with open(index, "w") as f:
            json.dump(idx, f)
    config.update(audio_config=audio.to_dict(), audio_soft_tokens_per_image=188, boa_token_id=boa_id,
                  eoa_token_id=offset, audio_token_id=offset + 1)
    with open(cfg_path, "w") as f:
        json.dump(config, f, indent=1)
