"""Audio end to end: a tiny random Gemma3nForConditionalGeneration exported to a bundle with its audio
tower, run by the runtime (gemma3n_rt.load, a prompt with a clip), against transformers' greedy ids
on the same prompt ids and the reference extractor's features."""
from __future__ import annotations


import numpy as np
import pytest
import soundfile as sf
import torch

import gemma3n_rt
from exporters.export import export
from mm_reference import AUDIO_TOKEN, BOA, EOA, TOKENS_PER_CLIP, VISION_OFFSET, export_mm

NEW_TOKENS = 16
SR = 16_000


@pytest.fixture(scope="module")
def setup(tmp_path_factory, demo_tokenizer_path):
    root = tmp_path_factory.mktemp("audio_e2e")
    model, ckpt, bundle = export_mm(root, 3, str(demo_tokenizer_path), vision=False)
    t = np.arange(int(2.5 * SR)) / SR
    wave = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 2 * t))
            + 0.05 * np.random.default_rng(9).standard_normal(len(t))).astype(np.float32)
    sf.write(root / "note.wav", wave, SR, subtype="FLOAT")
    return model, gemma3n_rt.load(bundle, threads=2), str(root / "note.wav"), wave, bundle, ckpt


def no_media_ids(ids, logits: np.ndarray) -> np.ndarray:
    """A random model may pick an image/audio id; the bundle has no vision tower to embed one
    fed back, so both sides are kept to text ids (a trained model does not emit them)."""
    logits = logits.copy()
    logits[..., VISION_OFFSET:] = -np.inf
    return logits


def greedy(ours, prepared) -> list[int]:
    return list(ours.generate_tokens(prepared, NEW_TOKENS, stop_ids=(), logits_processors=(no_media_ids,),
                                     temperature=0))


def reference_greedy(model, ids, features, mask) -> list[int]:
    vocab = model.config.text_config.vocab_size
    out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         input_features=torch.from_numpy(features), input_features_mask=torch.from_numpy(mask),
                         max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None,
                         pad_token_id=0, suppress_tokens=list(range(VISION_OFFSET, vocab)))
    return out[0, len(ids):].tolist()


def reference_features(wave: np.ndarray):
    from transformers import Gemma3nAudioFeatureExtractor
    out = Gemma3nAudioFeatureExtractor()(wave, return_tensors="np")
    return out["input_features"], out["input_features_mask"]


def test_prompt_with_one_clip_matches_reference_greedy(setup):
    model, ours, path, wave, _, _ = setup
    prepared = ours.prompt("Transcribe this.", audio=[path])
    ids = prepared.ids
    start = ids.index(AUDIO_TOKEN)
    assert ids[start - 1] == BOA and ids[start:start + TOKENS_PER_CLIP] == [AUDIO_TOKEN] * TOKENS_PER_CLIP
    assert ids[start + TOKENS_PER_CLIP] == EOA
    got = greedy(ours, prepared)
    features, mask = reference_features(wave)
    assert got == reference_greedy(model, ids, features, mask)
    # the clip matters: silence instead gives other ids
    silent = ours.prompt("Transcribe this.", audio=[(np.zeros(SR, np.float32), SR)])
    assert greedy(ours, silent) != got


def test_audio_api_forms_and_errors(setup, tmp_path):
    model, ours, path, wave, bundle, _ = setup
    a = ours.prompt("Hi", audio=[path])
    b = ours.prompt([{"role": "user", "content": [{"type": "audio", "audio": path}, {"type": "text", "text": "Hi"}]}])
    c = ours.prompt("Hi", audio=[(np.stack([wave, wave], 1), SR)])
    assert a.ids == b.ids == c.ids
    np.testing.assert_allclose(a.media[0][1].embeds, c.media[0][1].embeds, atol=1e-5)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a sound file at all")
    with pytest.raises(gemma3n_rt.Gemma3nError, match="bad.wav: not an audio file"):
        ours.generate("Hi", audio=[str(bad)], max_new_tokens=2)
    capped = gemma3n_rt.load(bundle, threads=2, max_clips=2)
    with pytest.raises(gemma3n_rt.Gemma3nError, match="longer than 60 s"):
        capped.prompt("Hi", audio=[(np.zeros(SR * 60 + 1, np.float32), SR)])
    two = ours.prompt("Hi", audio=[(np.zeros(SR * 45, np.float32), SR)])
    assert two.ids.count(AUDIO_TOKEN) == 2 * TOKENS_PER_CLIP      # 45 s: two clips, two blocks
    assert ours.generate("Hi", max_new_tokens=2, temperature=0) is not None   # the model keeps working


def test_clip_to_a_bundle_without_audio(setup, tmp_path):
    *_, path, _, _, ckpt = setup
    text_only = str(tmp_path / "text_only")
    export(ckpt, text_only, quant="fp32", tables="fp32", show_progress=False, audio_quant="none")
    model = gemma3n_rt.load(text_only, threads=2)
    with pytest.raises(gemma3n_rt.Gemma3nError, match="no audio encoder"):
        model.generate("Transcribe.", audio=[path], max_new_tokens=2)
    assert len(model.generate_ids([2, 100, 200], 3, temperature=0)) == 3      # and it keeps working
