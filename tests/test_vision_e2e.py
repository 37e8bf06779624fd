"""Images end to end: a tiny random Gemma3nForConditionalGeneration exported to a bundle with its
vision tower (fp32), run by the runtime (gemma3n_rt.load, prompts with one and two images),
against transformers' greedy ids on the same prompt ids and the reference processor's pixels."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

import gemma3n_rt
from exporters.export import export
from mm_reference import AUDIO_OFFSET, BOI, EOI, IMAGE_TOKEN, TOKENS_PER_IMAGE, export_mm, reference_pixels
from test_vision import scene

NEW_TOKENS = 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory, demo_tokenizer_path):
    root = tmp_path_factory.mktemp("vision_e2e")
    model, ckpt, bundle = export_mm(root, 5, str(demo_tokenizer_path), audio=False)
    text_only = str(root / "text_only")
    export(ckpt, text_only, quant="fp32", tables="fp32", show_progress=False, vision_quant="none")
    paths = []
    for i, size in enumerate([(640, 480), (300, 700)]):
        paths.append(str(root / f"picture{i}.png"))
        Image.fromarray(scene(*size, seed=40 + i)).save(paths[-1])
    return model, gemma3n_rt.load(bundle, threads=2), paths, text_only, bundle


def no_audio_ids(ids, logits: np.ndarray) -> np.ndarray:
    """A random model may pick an audio id; this bundle has no audio tower to embed one fed back, so
    both sides keep to text and vision ids (a generated vision id uses the hard-embedding table)."""
    logits = logits.copy()
    logits[..., AUDIO_OFFSET:] = -np.inf
    return logits


def greedy(ours, prepared) -> list[int]:
    return list(ours.generate_tokens(prepared, NEW_TOKENS, stop_ids=(), logits_processors=(no_audio_ids,),
                                     temperature=0))


def reference_greedy(model, ids, pixels) -> list[int]:
    vocab = model.config.text_config.vocab_size
    out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         pixel_values=torch.from_numpy(pixels), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                         do_sample=False, eos_token_id=None, pad_token_id=0,
                         suppress_tokens=list(range(AUDIO_OFFSET, vocab)))
    return out[0, len(ids):].tolist()


def image_blocks(ids: list[int]) -> int:
    """Image blocks in `ids`, each checked: <start_of_image>, 256 soft ids, <end_of_image>."""
    starts = [i for i, t in enumerate(ids) if t == BOI]
    for s in starts:
        assert ids[s + 1:s + 1 + TOKENS_PER_IMAGE] == [IMAGE_TOKEN] * TOKENS_PER_IMAGE
        assert ids[s + 1 + TOKENS_PER_IMAGE] == EOI
    assert ids.count(IMAGE_TOKEN) == TOKENS_PER_IMAGE * len(starts)
    return len(starts)


@pytest.mark.parametrize("count", [1, 2])
def test_prompt_with_images_matches_reference_greedy(setup, count):
    model, ours, paths, *_ = setup
    prepared = ours.prompt("Describe the pictures.", images=paths[:count])
    assert image_blocks(prepared.ids) == count
    got = greedy(ours, prepared)
    pixels = reference_pixels([Image.open(p) for p in paths[:count]])
    assert got == reference_greedy(model, prepared.ids, pixels)


def test_the_image_matters_and_forms_agree(setup):
    _, ours, paths, *_ = setup
    a = ours.prompt("What is this?", images=[paths[0]])
    b = ours.prompt([{"role": "user", "content": [{"type": "image", "image": paths[0]},
                                                  {"type": "text", "text": "What is this?"}]}])
    assert a.ids == b.ids
    np.testing.assert_array_equal(a.media[0][1].embeds, b.media[0][1].embeds)
    other = ours.prompt("What is this?", images=[np.asarray(Image.open(paths[0]))[::-1]])   # upside down
    assert greedy(ours, other) != greedy(ours, a)


def test_windowing_adds_crop_blocks(setup, tmp_path):
    _, ours, _, _, bundle = setup
    windowed = gemma3n_rt.load(bundle, threads=2, windowing=True, max_crops=2)
    pano = tmp_path / "pano.png"
    Image.fromarray(scene(1200, 400, seed=9)).save(pano)
    assert image_blocks(windowed.prompt("Read it.", images=[str(pano)]).ids) == 3     # whole + 2 crops
    assert image_blocks(ours.prompt("Read it.", images=[str(pano)]).ids) == 1       # off by default


def test_image_to_a_bundle_without_vision(setup):
    _, _, paths, text_only, _ = setup
    ours = gemma3n_rt.load(text_only, threads=2)
    with pytest.raises(gemma3n_rt.Gemma3nError, match="no image encoder") as err:
        ours.generate("Describe.", images=[paths[0]], max_new_tokens=2)
    assert "\n" not in str(err.value)
    assert ours.generate("Hello", max_new_tokens=3, temperature=0) is not None     # the model keeps working


def test_bad_images_are_one_line_and_the_model_recovers(setup, tmp_path):
    _, ours, paths, *_ = setup
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(gemma3n_rt.Gemma3nError, match="notes.png: not an image Pillow can open"):
        ours.generate("Describe.", images=[str(text)], max_new_tokens=2)
    prepared = ours.prompt("Describe the pictures.", images=paths[:1])
    first = greedy(ours, prepared)
    assert greedy(ours, ours.prompt("Describe the pictures.", images=paths[:1])) == first
