"""The exported audio encoder against transformers' Gemma3nAudioEncoder + embed_audio on a tiny
random tower: soft embeddings with the reference's padding, token counts, the hard-embedding table,
int8 error, and the exporter's handling of checkpoints with and without a tower."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from audio_reference import (TEXT_VOCAB, reference_audio, reference_soft_embeddings, save_audio_checkpoint,
                             tiny_audio_config)
from exporters.audio import audio_part, feature_config
from exporters.checkpoint import Checkpoint
from gemma3n_rt.audio import AudioEncoder, extract_features
from gemma3n_rt.bundle import Bundle
from gemma3n_rt.config import AudioConfig, AudioFeatureConfig
from gemma3n_rt.errors import Gemma3nError
from gemma3n_rt.rowtable import RowTable

SR = 16_000
SECONDS_TO_TOKENS = {1: 7, 5: 32, 10: 63, 30: 188}   # gemma3n-spec.md 4.2


def clip(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.1 * rng.standard_normal(len(t)) + 0.2 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)


def audio_bundle(path, fragment: dict) -> Bundle:
    """A bundle holding just the audio part (the text part is not needed by the encoder)."""
    return Bundle(str(path), {"audio": fragment}, None, (), None, None, "", None, AudioConfig.from_dict(fragment))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Reference modules, and the fp32 and int8 exports of their checkpoint."""
    root = tmp_path_factory.mktemp("audio")
    tower, embed = reference_audio(tiny_audio_config())
    save_audio_checkpoint(tower, embed, str(root / "ckpt"))
    out = {}
    for quant in ("fp32", "int8"):
        ckpt = Checkpoint(str(root / "ckpt"))
        part = audio_part(ckpt, quant)
        ckpt.finish()                              # every tower tensor was claimed
        fragment = part.write(str(root / quant), show_progress=False)["audio"]
        out[quant] = (AudioEncoder(audio_bundle(root / quant, fragment), threads=2), fragment, root / quant)
    return tower, embed, out


def relative(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("seconds", [0.05, 1, 2.7, 5, 10, 30])
def test_fp32_soft_embeddings_match_reference(tiny, seconds):
    tower, embed, out = tiny
    encoder = out["fp32"][0]
    features, mask = extract_features(clip(seconds, int(seconds * 100)))
    ref = reference_soft_embeddings(tower, embed, features[None], mask[None])[0]
    got = encoder.encode(features, mask)
    assert got.shape == ref.shape == (188, 48)
    assert relative(got, ref) < 1e-4
    np.testing.assert_allclose(got, ref, atol=1e-4 * np.abs(ref).max())


def test_token_counts_per_clip_length(tiny):
    """Rows that are not the padding embedding: 1 s -> 7, 5 s -> 32, 10 s -> 63, 30 s -> 188."""
    tower, embed, out = tiny
    pad = embed(input_ids=torch.tensor([[TEXT_VOCAB - 1]]))[0, 0].detach().numpy()
    for seconds, tokens in SECONDS_TO_TOKENS.items():
        features, mask = extract_features(clip(seconds, seconds))
        got = out["fp32"][0].encode(features, mask)
        is_pad = np.abs(got - pad).max(1) < 1e-6
        assert (~is_pad).sum() == tokens and not is_pad[:tokens].any() and is_pad[tokens:].all(), seconds
        ref_mask = tower(torch.from_numpy(features[None]), ~torch.from_numpy(mask[None])).audio_mel_mask
        assert int((~ref_mask).sum()) == tokens


def test_masked_frames_become_padding_rows(tiny):
    """A batch-style mask (frames past the end of a shorter clip are False) gives padding rows there."""
    tower, embed, out = tiny
    features, mask = extract_features(clip(5, 1))
    mask = mask.copy()
    mask[250:] = False
    ref = reference_soft_embeddings(tower, embed, features[None], mask[None])[0]
    got = out["fp32"][0].encode(features, mask)
    assert relative(got, ref) < 1e-4
    assert np.abs(got[16:] - got[-1]).max() < 1e-6       # ceil(ceil(ceil(250/2)/2)/4) = 16 valid rows


def test_silence_and_empty_clips(tiny):
    tower, embed, out = tiny
    encoder = out["fp32"][0]
    features, mask = extract_features(np.zeros(SR, np.float32))
    ref = reference_soft_embeddings(tower, embed, features[None], mask[None])[0]
    got = encoder.encode(features, mask)
    assert np.isfinite(got).all() and relative(got, ref) < 1e-4
    pad = embed(input_ids=torch.tensor([[TEXT_VOCAB - 1]]))[0, 0].detach().numpy()
    empty = encoder.encode(*extract_features(np.zeros(0, np.float32)))
    assert empty.shape == (188, 48)
    np.testing.assert_allclose(empty, np.broadcast_to(pad, empty.shape), atol=1e-6)
    with pytest.raises(Gemma3nError, match="expected features"):
        encoder.encode(np.zeros((10, 64), np.float32), np.ones(10, bool))


def test_int8_error(tiny):
    """int8 (MatMulNBits, 8 bits, blocks of 32, int8 compute) vs the reference: a few per cent on this tiny random
    tower (the real-shape figure is in bench/audio_encoder.py); the padding rows stay exact."""
    tower, embed, out = tiny
    encoder, fragment, _ = out["int8"]
    assert fragment["quant"] == "int8" and fragment["weight_bytes"] < out["fp32"][1]["weight_bytes"] / 2.5
    errors = []
    for seconds in (1, 10, 30):
        features, mask = extract_features(clip(seconds, seconds + 50))
        ref = reference_soft_embeddings(tower, embed, features[None], mask[None])[0]
        got = encoder.encode(features, mask)
        n = SECONDS_TO_TOKENS[seconds]
        errors.append(relative(got[:n], ref[:n]))
        np.testing.assert_allclose(got[n:], ref[n:], atol=1e-6)
    print(f"int8 audio encoder, relative error of the soft rows (1 s, 10 s, 30 s): {errors}")
    assert max(errors) < 0.05, errors


def test_hard_table_and_manifest(tiny):
    tower, embed, out = tiny
    _, fragment, bundle_dir = out["fp32"]
    table = RowTable(str(bundle_dir / fragment["hard_embeddings"]))
    ids = torch.arange(262272, 262400)[None]
    ref = embed(input_ids=ids)[0].detach().numpy()
    np.testing.assert_allclose(table.gather(np.arange(128))[:, 0], ref, atol=1e-6)
    assert fragment["vocab_offset"] == 262272 and fragment["vocab_size"] == 128
    assert (fragment["begin_id"], fragment["end_id"], fragment["soft_id"]) == (256000, 262272, 262273)
    assert fragment["tokens_per_clip"] == 188 and fragment["max_samples"] == 30 * SR
    assert fragment["params"] == sum(p.numel() for p in tower.parameters()) + sum(p.numel() for p in embed.parameters())
    assert AudioConfig.from_dict(json.loads(json.dumps(fragment))).feature == AudioFeatureConfig()


def test_checkpoints_without_a_tower_and_quant_none(tmp_path):
    from safetensors.numpy import save_file
    d = tmp_path / "ckpt"
    d.mkdir()
    save_file({"model.embed_audio.embedding.weight": np.zeros((4, 8), np.float32)}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"model_type": "gemma3n", "audio_config": {}}))
    ckpt = Checkpoint(str(d))
    assert audio_part(ckpt, "int8") is None
    ckpt.finish()                                  # the stray tensor was ignored, not left over
    with pytest.raises(Gemma3nError, match="--audio-quant"):
        audio_part(Checkpoint(str(d)), "int4")


def test_wrong_tensor_shape_is_an_error(tmp_path):
    tower, embed = reference_audio(tiny_audio_config(), seed=1)
    with torch.no_grad():
        embed.embedding_projection.weight = torch.nn.Parameter(torch.zeros(40, 64))
    save_audio_checkpoint(tower, embed, str(tmp_path / "ckpt"))
    with pytest.raises(Gemma3nError, match="embed_audio.embedding_projection.weight has shape"):
        audio_part(Checkpoint(str(tmp_path / "ckpt")), "fp32")


def test_feature_config_from_preprocessor(tmp_path):
    assert feature_config(str(tmp_path)) == AudioFeatureConfig()
    released = {"feature_extractor_type": "Gemma3nAudioFeatureExtractor", "feature_size": 128, "sampling_rate": 16000,
                "frame_length_ms": 32.0, "hop_length_ms": 10.0, "min_frequency": 125.0, "max_frequency": 7600.0,
                "preemphasis": 0.97, "preemphasis_htk_flavor": True, "fft_overdrive": True, "dither": 0.0,
                "input_scale_factor": 1.0, "mel_floor": 1e-05, "per_bin_mean": None, "per_bin_stddev": None}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(released))
    assert feature_config(str(tmp_path)) == AudioFeatureConfig()
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**released, "dither": 1e-4}))
    with pytest.raises(Gemma3nError, match="dither"):
        feature_config(str(tmp_path))
