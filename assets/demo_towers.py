"""Tiny random vision and audio towers for the demo checkpoint (make_demo.py adds both before export).

Each tower's weights go into one more shard, listed in the checkpoint's index, and config.json
gains its config and token ids. The audio ids must end at the text vocabulary's last id: the reference pads
clips with the hard embedding of id vocab_size - 1 (as 262399 is in the real model)."""
from __future__ import annotations

import json
import os

TOWER_SHARD = "model-{}.safetensors"


def _random(module, prefix: str, tensors: dict, torch) -> None:
    """Weights varied enough to exercise every op (norms around 1, matrices ~ N(0, 1/fan_in))."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            value = 1.0 + 0.2 * torch.randn_like(p) if p.ndim == 1 else torch.randn_like(p) * p[0].numel() ** -0.5
            tensors[prefix + name] = value.float().numpy()


def _add(ckpt_dir: str, kind: str, tensors: dict, config_update: dict) -> None:
    """Write the tower's tensors as one more shard, list them in the index, update config.json."""
    from safetensors.numpy import save_file
    shard = TOWER_SHARD.format(kind)
    save_file(tensors, os.path.join(ckpt_dir, shard))
    index = os.path.join(ckpt_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            idx = json.load(f)
        idx["weight_map"].update({name: shard for name in tensors})
        with open(index, "w") as f:
            json.dump(idx, f)
    cfg_path = os.path.join(ckpt_dir, "config.json")
    with open(cfg_path) as f:
        config = json.load(f)
    config.update(config_update)
    with open(cfg_path, "w") as f:
        json.dump(config, f, indent=1)


def _text_config(ckpt_dir: str) -> dict:
    with open(os.path.join(ckpt_dir, "config.json")) as f:
        config = json.load(f)
    return config.get("text_config", config)


def add_vision_tower(ckpt_dir: str, boi_id: int = 6, vision_vocab: int = 32, audio_vocab: int = 32,
                     channel_multiplier: float = 0.03125, seed: int = 0) -> None:
    """Add model.vision_tower.timm_model.* (timm's MobileNet-V5 shrunk by channel_multiplier; its
    output stays 2048 wide) and model.embed_vision.* to the checkpoint in ckpt_dir.

    Vision ids: the `vision_vocab` ids before the audio ids ([2048, 2080) for the demo's 2112);
    <end_of_image> is the first, <image_soft_token> the second, <start_of_image> is boi_id, the demo
    tokenizer's control piece 6."""
    import timm
    import torch
    from transformers import Gemma3nTextConfig, Gemma3nVisionConfig
    from transformers.models.gemma3n.modeling_gemma3n import Gemma3nMultimodalEmbedder

    text = _text_config(ckpt_dir)
    offset = text["vocab_size"] - audio_vocab - vision_vocab
    vision = Gemma3nVisionConfig(architecture="mobilenetv5_300m_enc", model_args={"channel_multiplier": channel_multiplier},
                                 hidden_size=2048, vocab_size=vision_vocab, vocab_offset=offset)
    torch.manual_seed(seed)
    tower = timm.create_model("mobilenetv5_300m_enc", pretrained=False, channel_multiplier=channel_multiplier)
    embed = Gemma3nMultimodalEmbedder(vision, Gemma3nTextConfig(hidden_size=text["hidden_size"],
                                                                vocab_size=text["vocab_size"]))
    tensors: dict = {}
    with torch.no_grad():   # timm's own initialisation for the tower (its layer scales stay small)
        tensors.update({"model.vision_tower.timm_model." + k: v.float().numpy() for k, v in tower.state_dict().items()
                        if v.is_floating_point()})
    _random(embed, "model.embed_vision.", tensors, torch)
    _add(ckpt_dir, "vision", tensors, dict(vision_config=vision.to_dict(), vision_soft_tokens_per_image=256,
                                           boi_token_id=boi_id, eoi_token_id=offset, image_token_id=offset + 1))


def add_audio_tower(ckpt_dir: str, boa_id: int = 8, audio_vocab: int = 32, seed: int = 0) -> None:
    """Add model.audio_tower.* and model.embed_audio.* to the checkpoint in ckpt_dir.

    Audio ids: [text_vocab - audio_vocab, text_vocab); <end_of_audio> is the first of them,
    <audio_soft_token> the second (as 262272 / 262273 are), <start_of_audio> is boa_id, a text id.
    The defaults are tests/mm_reference.py's: with the demo's 2112 ids, audio is [2080, 2112) (vision
    [2048, 2080) stays free) and <start_of_audio> is the demo tokenizer's control piece 8."""
    import torch
    from transformers import Gemma3nAudioConfig, Gemma3nTextConfig
    from transformers.models.gemma3n.modeling_gemma3n import Gemma3nAudioEncoder, Gemma3nMultimodalEmbedder

    text = _text_config(ckpt_dir)
    offset = text["vocab_size"] - audio_vocab
    audio = Gemma3nAudioConfig(hidden_size=32, conf_num_hidden_layers=1, conf_num_attention_heads=2,
                               sscp_conv_channel_size=[4, 4], vocab_size=audio_vocab, vocab_offset=offset)
    torch.manual_seed(seed)
    tower = Gemma3nAudioEncoder(audio)
    embed = Gemma3nMultimodalEmbedder(audio, Gemma3nTextConfig(hidden_size=text["hidden_size"],
                                                               vocab_size=text["vocab_size"]))
    tensors: dict = {}
    _random(tower, "model.audio_tower.", tensors, torch)
    _random(embed, "model.embed_audio.", tensors, torch)
    _add(ckpt_dir, "audio", tensors, dict(audio_config=audio.to_dict(), audio_soft_tokens_per_image=188,
                                          boa_token_id=boa_id, eoa_token_id=offset, audio_token_id=offset + 1))
