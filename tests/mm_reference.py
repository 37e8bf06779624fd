"""A tiny random Gemma3nForConditionalGeneration (text + shrunk vision tower + small audio tower) in the
real Hugging Face layout, and the reference computations that parity tests compare against.
Test-only: the runtime never imports torch, transformers or timm.

Ids (inside the tiny text vocab of 2112): vision [2048, 2080) with <end_of_image> 2048 and
<image_soft_token> 2049; audio [2080, 2112) with <end_of_audio> 2080 and <audio_soft_token> 2081;
<start_of_image> / <start_of_audio> are the demo tokenizer's control pieces (6 and 8)."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import Gemma3nAudioConfig, Gemma3nConfig, Gemma3nForConditionalGeneration, Gemma3nVisionConfig

from hf_reference import tiny_text_config

VISION_OFFSET, VISION_VOCAB = 2048, 32
AUDIO_OFFSET, AUDIO_VOCAB = 2080, 32
BOI, EOI, IMAGE_TOKEN = 6, VISION_OFFSET, VISION_OFFSET + 1
BOA, EOA, AUDIO_TOKEN = 8, AUDIO_OFFSET, AUDIO_OFFSET + 1
IMAGE_SIZE = 768
TOKENS_PER_IMAGE = 256
TOKENS_PER_CLIP = 188
TINY_VISION_ARGS = {"channel_multiplier": 0.125}
TINY_AUDIO = dict(hidden_size=96, conf_num_hidden_layers=2, conf_num_attention_heads=4,
                  sscp_conv_channel_size=[32, 16], input_feat_size=128)


def tiny_mm_config(audio_overrides: dict | None = None, vision_model_args: dict | None = None,
                   **text_overrides) -> Gemma3nConfig:
    """Gemma3nConfig with the tiny text decoder, a shrunk MobileNet-V5 (its output stays 2048 wide:
    timm's encoder always ends in 2048 channels) and a small conformer (`audio_overrides` replace
    any Gemma3nAudioConfig field)."""
    text = tiny_text_config(**text_overrides)
    vision = Gemma3nVisionConfig(architecture="mobilenetv5_300m_enc",
                                 model_args=dict(vision_model_args or TINY_VISION_ARGS),
                                 hidden_size=2048, vocab_size=VISION_VOCAB, vocab_offset=VISION_OFFSET)
    audio = Gemma3nAudioConfig(**{**TINY_AUDIO, "vocab_size": AUDIO_VOCAB, "vocab_offset": AUDIO_OFFSET,
                                  **(audio_overrides or {})})
    return Gemma3nConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), audio_config=audio.to_dict(),
                         vision_soft_tokens_per_image=TOKENS_PER_IMAGE, audio_soft_tokens_per_image=TOKENS_PER_CLIP,
                         boi_token_id=BOI, eoi_token_id=EOI, image_token_id=IMAGE_TOKEN,
                         boa_token_id=BOA, eoa_token_id=EOA, audio_token_id=AUDIO_TOKEN)


def _vary(name: str, p: torch.Tensor, gain: float, embed_std: float | None, altup_std: float) -> torch.Tensor:
    """A value for parameter `name` varied enough to exercise every op (not the init defaults)."""
    if name.endswith("layer_scale.gamma"):     # timm inits it at 1e-5: blocks would be near-identity
        return 0.3 * (1.0 + 0.2 * torch.randn_like(p))
    if p.ndim == 1 and name.endswith("bias"):
        return 0.1 * torch.randn_like(p)
    if p.ndim == 1:                             # norms and scales: around 1, so nothing vanishes
        return 1.0 + 0.2 * torch.randn_like(p)
    if "altup" in name and "coefs" in name:
        return altup_std * torch.randn_like(p)
    if embed_std and name.endswith("language_model.embed_tokens.weight"):
        return torch.randn_like(p) * embed_std
    if name.endswith("embed_vision.embedding.weight") or name.endswith("embed_audio.embedding.weight"):
        return torch.randn_like(p)
    fan_in = p[0].numel()                       # conv kernels: in_channels * kh * kw
    return torch.randn_like(p) * gain * fan_in ** -0.5


def reference_mm_model(cfg: Gemma3nConfig, seed: int, embed_std: float | None = 1.0, gain: float = 1.0,
                       altup_std: float = 0.3) -> Gemma3nForConditionalGeneration:
    """A random multimodal model, float32, eval mode (see hf_reference.reference_model for the choices)."""
    torch.manual_seed(seed)
    model = Gemma3nForConditionalGeneration(cfg).eval().float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(_vary(name, p, gain, embed_std, altup_std))
    return model


def checkpoint_tensors(model: Gemma3nForConditionalGeneration, vision: bool = True, audio: bool = True) -> dict:
    """The model's tensors under their checkpoint names (model.*; the LM head is tied, not stored),
    plus the unused K/V weights of KV-shared layers that real checkpoints carry."""
    tensors = {}
    for name, t in model.model.state_dict().items():
        if not vision and (name.startswith("vision_tower.") or name.startswith("embed_vision.")):
            continue
        if not audio and (name.startswith("audio_tower.") or name.startswith("embed_audio.")):
            continue
        tensors["model." + name] = t.detach().float().numpy().copy()
    text = model.config.text_config
    rng = np.random.default_rng(0)
    kv = text.num_key_value_heads * text.head_dim
    for i in range(text.num_hidden_layers - text.num_kv_shared_layers, text.num_hidden_layers):
        p = f"model.language_model.layers.{i}.self_attn."
        for k in ("k_proj.weight", "v_proj.weight"):
            if p + k not in tensors:
                tensors[p + k] = rng.standard_normal((kv, text.hidden_size), np.float32)
        tensors.setdefault(p + "k_norm.weight", np.ones(text.head_dim, np.float32))
    return tensors


def save_multimodal_checkpoint(model: Gemma3nForConditionalGeneration, out_dir: str,
                               tokenizer: str | None = None, vision: bool = True, audio: bool = True,
                               shards: int = 3) -> None:
    """Save as the released checkpoints are: sharded safetensors, model.safetensors.index.json,
    config.json (with vision_config/audio_config) and preprocessor_config.json. `vision=False` /
    `audio=False` leave that tower's tensors out (its config stays, as in a text-only export)."""
    os.makedirs(out_dir, exist_ok=True)
    tensors = checkpoint_tensors(model, vision, audio)
    names = sorted(tensors)
    weight_map = {}
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k] for k in names[s::shards]}
        save_file(part, os.path.join(out_dir, fname))
        weight_map.update({k: fname for k in part})
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    cfg = model.config.to_dict()
    cfg["architectures"] = ["Gemma3nForConditionalGeneration"]
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
        json.dump(PREPROCESSOR_CONFIG, f, indent=1)
    if tokenizer:
        shutil.copyfile(tokenizer, os.path.join(out_dir, "tokenizer.model"))


# The image half of a Gemma 3n preprocessor_config.json. do_convert_rgb is left to the class default
# (True): with it null, transformers hands grayscale and palette images to the tower as one channel.
PREPROCESSOR_CONFIG = {
    "image_processor_type": "SiglipImageProcessorFast", "processor_class": "Gemma3nProcessor",
    "do_normalize": False, "do_rescale": True, "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "image_seq_length": 256,
    "resample": 2, "rescale_factor": 1 / 255, "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
}


def reference_processor():
    """The image processor a released checkpoint's preprocessor_config.json gives (AutoImageProcessor)."""
    import tempfile

    from transformers import AutoImageProcessor
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "preprocessor_config.json"), "w") as f:
            json.dump(PREPROCESSOR_CONFIG, f)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump({"model_type": "gemma3n"}, f)
        return AutoImageProcessor.from_pretrained(d)


def reference_pixels(images) -> np.ndarray:
    """pixel_values [N, 3, 768, 768] float32 from the reference processor for PIL images."""
    out = reference_processor()(images=list(images), return_tensors="pt")
    return out["pixel_values"].float().numpy()


@torch.no_grad()
def reference_soft_embeddings(model: Gemma3nForConditionalGeneration, pixels: np.ndarray) -> np.ndarray:
    """Soft image embeddings [N, 256, text hidden] (tower + embed_vision's soft path)."""
    out = model.model.get_image_features(torch.from_numpy(np.asarray(pixels, np.float32)), return_dict=True)
    return out.pooler_output.float().numpy()


@torch.no_grad()
def reference_hard_embeddings(model: Gemma3nForConditionalGeneration, ids) -> np.ndarray:
    """embed_vision / embed_audio hard path for multimodal ids, [len(ids), text hidden]."""
    ids = torch.tensor(list(ids))
    emb = model.model.embed_audio if int(ids.min()) >= AUDIO_OFFSET else model.model.embed_vision
    return emb(input_ids=ids).float().numpy()


@torch.no_grad()
def reference_mm_greedy(model: Gemma3nForConditionalGeneration, ids: list[int], n: int, pixel_values=None,
                        input_features=None, input_features_mask=None) -> list[int]:
    """Greedy continuation of `ids` (soft-token positions hold the soft ids) with images and/or audio."""
    kw = {}
    if pixel_values is not None:
        kw["pixel_values"] = torch.from_numpy(np.asarray(pixel_values, np.float32))
    if input_features is not None:
        kw["input_features"] = torch.from_numpy(np.asarray(input_features, np.float32))
        kw["input_features_mask"] = torch.from_numpy(np.asarray(input_features_mask, bool))
    out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0, **kw)
    return out[0, len(ids):].tolist()


def export_mm(root, seed: int, tokenizer: str, vision: bool = True, audio: bool = True):
    """A tiny random model with the towers asked for, saved as a checkpoint and exported to an fp32
    bundle (towers fp32 too): (reference model, checkpoint dir, bundle dir)."""
    from exporters.export import export
    model = reference_mm_model(tiny_mm_config(), seed=seed)
    ckpt, bundle = str(root / "ckpt"), str(root / "bundle")
    save_multimodal_checkpoint(model, ckpt, tokenizer=tokenizer, vision=vision, audio=audio)
    export(ckpt, bundle, quant="fp32", tables="fp32", show_progress=False,
           vision_quant="fp32" if vision else "none", audio_quant="fp32" if audio else "none")
    return model, ckpt, bundle
