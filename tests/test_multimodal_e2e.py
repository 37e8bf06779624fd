"""An image and a clip in one prompt: a tiny random Gemma3nForConditionalGeneration with both towers,
exported (fp32), run by the runtime, against transformers' greedy ids on the same prompt ids with
the reference processor's pixels and the reference extractor's features."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

import gemma3n_rt
from mm_reference import AUDIO_TOKEN, IMAGE_TOKEN, export_mm, reference_pixels
from test_audio_e2e import reference_features
from test_vision import scene

NEW_TOKENS = 16
SR = 16_000


@pytest.fixture(scope="module")
def setup(tmp_path_factory, demo_tokenizer_path):
    root = tmp_path_factory.mktemp("mm_e2e")
    model, _, bundle = export_mm(root, 11, str(demo_tokenizer_path))
    image = str(root / "picture.png")
    Image.fromarray(scene(500, 400, seed=3)).save(image)
    t = np.arange(int(1.7 * SR)) / SR
    wave = (0.4 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32)
    clip = str(root / "clip.wav")
    sf.write(clip, wave, SR, subtype="FLOAT")
    return model, gemma3n_rt.load(bundle, threads=2), image, clip, wave


def test_image_and_clip_match_reference_greedy(setup):
    model, ours, image, clip, wave = setup
    prepared = ours.prompt([{"role": "user", "content": [
        {"type": "image", "image": image}, {"type": "audio", "audio": clip},
        {"type": "text", "text": "What do you see and hear?"}]}])
    ids = prepared.ids
    assert ids.index(IMAGE_TOKEN) < ids.index(AUDIO_TOKEN) and [m.kind for _, m in prepared.media] == ["image", "audio"]
    got = list(ours.generate_tokens(prepared, NEW_TOKENS, stop_ids=(), temperature=0))
    features, mask = reference_features(wave)
    out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         pixel_values=torch.from_numpy(reference_pixels([Image.open(image)])),
                         input_features=torch.from_numpy(features), input_features_mask=torch.from_numpy(mask),
                         max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None,
                         pad_token_id=0)
    assert got == out[0, len(ids):].tolist()


def test_text_only_request_opens_no_tower_file(setup, monkeypatch):
    """Conditional loading: with both towers in the bundle, a text request creates no encoder
    session and reads no vision/ or audio/ file."""
    _, ours, *_ = setup
    import onnxruntime
    import gemma3n_rt.bundle as bundle_module
    opened, checked = [], []
    real_session, real_check = onnxruntime.InferenceSession, bundle_module.check_content
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda path, *a, **k: opened.append(path) or real_session(path, *a, **k))
    monkeypatch.setattr(bundle_module, "check_content", lambda b, rel, meta: checked.append(rel) or real_check(b, rel, meta))
    fresh = gemma3n_rt.load(ours.bundle.path, threads=2)
    fresh.generate("Hello", max_new_tokens=4, temperature=0)
    assert any("decoder" in p for p in opened) and any(p.startswith("text/") for p in checked)   # seen
    assert not [p for p in opened + checked if "vision/" in p or "audio/" in p]
    fresh.prompt("Describe.", images=[setup[2]])           # an image loads the vision encoder, then releases it
    assert any("vision/" in p for p in opened) and fresh.media.vision is None
    assert fresh.media.vision is None and fresh.media.audio is None
