"""The exported audio encoder inside the reference model: transformers' Gemma3nForConditionalGeneration
(tiny, random, tests/mm_reference.py) generates greedily with its own audio path, and again with the
clip's soft embeddings taken from our exported encoder (fp32 and int8). The whole runtime path
(prompt builder, embedding step) is tested against the same reference in the end-to-end tests."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from exporters.audio import audio_part
from exporters.checkpoint import Checkpoint
from gemma3n_rt.audio import AudioEncoder, extract_features
from gemma3n_rt.bundle import Bundle
from gemma3n_rt.config import AudioConfig
from mm_reference import AUDIO_TOKEN, BOA, EOA, TOKENS_PER_CLIP, reference_mm_greedy, reference_mm_model, \
    save_multimodal_checkpoint, tiny_mm_config

NEW_TOKENS = 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("mm_audio")
    model = reference_mm_model(tiny_mm_config(), seed=3)
    save_multimodal_checkpoint(model, str(root / "ckpt"))
    encoders = {}
    for quant in ("fp32", "int8"):
        fragment = audio_part(Checkpoint(str(root / "ckpt")), quant).write(str(root / quant), False)["audio"]
        bundle = Bundle(str(root / quant), {}, None, (), None, None, "", None, AudioConfig.from_dict(fragment))
        encoders[quant] = AudioEncoder(bundle, threads=2)
    return model, encoders


def prompt_ids() -> list[int]:
    rng = np.random.default_rng(11)
    text = lambda n: [int(x) for x in rng.integers(10, 2000, n)]   # noqa: E731
    return [2] + text(5) + [BOA] + [AUDIO_TOKEN] * TOKENS_PER_CLIP + [EOA] + text(6)


def greedy_with_embeddings(model, ids, features, mask, soft: np.ndarray) -> list[int]:
    """The reference's generate, with get_audio_features answering our soft embeddings (none masked:
    they already hold the padding rows), so the merge scatters exactly them."""
    inner = model.model
    original = inner.get_audio_features

    def ours(*args, **kwargs):
        out = original(*args, **kwargs)
        out.pooler_output = torch.from_numpy(soft[None])
        out.audio_mel_mask = torch.zeros(1, soft.shape[0], dtype=torch.bool)
        return out

    inner.get_audio_features = ours
    try:
        return reference_mm_greedy(model, ids, NEW_TOKENS, input_features=features[None], input_features_mask=mask[None])
    finally:
        inner.get_audio_features = original


def test_greedy_with_exported_encoder_matches_reference(setup):
    model, encoders = setup
    t = np.arange(3 * 16000) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t)
            + 0.05 * np.random.default_rng(2).standard_normal(len(t))).astype(np.float32)
    features, mask = extract_features(wave)
    ids = prompt_ids()
    ref = reference_mm_greedy(model, ids, NEW_TOKENS, input_features=features[None], input_features_mask=mask[None])
    fp32 = greedy_with_embeddings(model, ids, features, mask, encoders["fp32"].encode(features, mask))
    assert fp32 == ref
    silence = encoders["fp32"].encode(*extract_features(np.zeros(0, np.float32)))
    assert greedy_with_embeddings(model, ids, features, mask, silence) != ref     # the clip matters
    int8 = greedy_with_embeddings(model, ids, features, mask, encoders["int8"].encode(features, mask))
    agree = next((i for i, (a, b) in enumerate(zip(int8, ref)) if a != b), NEW_TOKENS)
    print(f"int8 audio encoder: greedy agrees with the reference for {agree}/{NEW_TOKENS} tokens")
    assert agree >= 4
