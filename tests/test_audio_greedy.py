"""The int8 audio encoder inside the reference model: transformers' Gemma3nForConditionalGeneration
(tiny, random, tests/mm_reference.py) generates greedily with its own audio path, and again with the
clip's soft embeddings taken from our int8 encoder: how many greedy tokens agree. The fp32 encoder
through the whole runtime is held to exact greedy agreement in test_audio_e2e.py."""
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
    fragment = audio_part(Checkpoint(str(root / "ckpt")), "int8").write(str(root / "int8"), False)["audio"]
    bundle = Bundle(str(root / "int8"), {}, None, (), None, None, "", None, AudioConfig.from_dict(fragment))
    return model, AudioEncoder(bundle, threads=2)


def prompt_ids(seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
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


@torch.no_grad()
def reference_soft(model, features, mask) -> np.ndarray:
    """The reference's own merged rows for the clip: soft embeddings, masked/missing ones padded."""
    out = model.model.get_audio_features(torch.from_numpy(features[None]), ~torch.from_numpy(mask[None]))
    pad = model.model.embed_audio(input_ids=torch.tensor([[model.config.text_config.vocab_size - 1]]))
    soft = torch.where(out.audio_mel_mask.unsqueeze(-1), pad, out.pooler_output)[0]
    return torch.cat([soft, pad[0].expand(TOKENS_PER_CLIP - soft.shape[0], -1)]).numpy()


def test_int8_greedy_agreement(setup):
    model, int8_encoder = setup
    t = np.arange(3 * 16000) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t)
            + 0.05 * np.random.default_rng(2).standard_normal(len(t))).astype(np.float32)
    features, mask = extract_features(wave)
    silence = int8_encoder.encode(*extract_features(np.zeros(0, np.float32)))
    # a random model often falls into a loop that ignores the clip: take the first text around it
    # for which the clip matters (silence in its place changes the greedy ids)
    for seed in range(6):
        ids = prompt_ids(seed)
        ref = reference_mm_greedy(model, ids, NEW_TOKENS, input_features=features[None],
                                  input_features_mask=mask[None])
        if greedy_with_embeddings(model, ids, features, mask, silence) != ref:
            break
    else:
        pytest.fail("the clip changes no greedy continuation of this random model")
    # the substitution itself changes nothing: the reference's own rows give its own ids
    assert greedy_with_embeddings(model, ids, features, mask, reference_soft(model, features, mask)) == ref
    int8 = greedy_with_embeddings(model, ids, features, mask, int8_encoder.encode(features, mask))
    agree = next((i for i, (a, b) in enumerate(zip(int8, ref)) if a != b), NEW_TOKENS)
    print(f"int8 audio encoder: greedy agrees with the reference for {agree}/{NEW_TOKENS} tokens (prompt {seed})")
    assert agree >= 4
