"""The vision part of the exporter on a tiny random Gemma3nForConditionalGeneration: the encoder
graph and hard rows against transformers, int8 within its measured bound, checkpoints without a tower."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from exporters.checkpoint import Checkpoint
from exporters.vision import vision_part
from gemma3n_rt.bundle import Bundle
from gemma3n_rt.config import VisionConfig
from gemma3n_rt.errors import Gemma3nError
from gemma3n_rt.rowtable import RowTable
from gemma3n_rt.vision import VisionEncoder, preprocess

mm = pytest.importorskip("mm_reference")
from test_vision import scene  # noqa: E402

INT8_BOUND = 0.05   # relative error of int8 soft tokens; 2.8 % measured on this tower


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def vision_bundle(directory: str, fragment: dict) -> Bundle:
    """A Bundle carrying only the vision section (the text part is not needed by the encoder)."""
    return Bundle(directory, {}, None, (), None, None, "", VisionConfig.from_dict(fragment["vision"]), None)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(reference model, checkpoint, fp32 dir, fp32 fragment, int8 dir, int8 fragment); the tower is
    traced once: the int8 graph is the fp32 one through the exporter's int8 pass."""
    import onnx

    from exporters.vision import ENCODER, initializer_bytes
    from exporters.vision_quant import quantize_weights
    model = mm.reference_mm_model(mm.tiny_mm_config(), seed=0)
    ckpt_dir = tmp_path_factory.mktemp("mm_ckpt")
    mm.save_multimodal_checkpoint(model, str(ckpt_dir))
    ckpt = Checkpoint(str(ckpt_dir))
    fp32_dir = str(tmp_path_factory.mktemp("vision_fp32"))
    part = vision_part(ckpt, "fp32")
    fragment = part.write(fp32_dir, show_progress=False)
    int8_dir = str(tmp_path_factory.mktemp("vision_int8"))
    shutil.copytree(os.path.join(fp32_dir, "vision"), os.path.join(int8_dir, "vision"), dirs_exist_ok=True)
    graph = onnx.load(os.path.join(fp32_dir, ENCODER))
    quantize_weights(graph)
    path = os.path.join(int8_dir, ENCODER)
    os.remove(path + ".data")
    onnx.save_model(graph, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=os.path.basename(path) + ".data", size_threshold=1024)
    int8 = {"vision": {**fragment["vision"], "quant": "int8", "weight_bytes": initializer_bytes(path)}}
    return model, ckpt, fp32_dir, fragment, int8_dir, int8


@pytest.fixture(scope="module")
def pictures():
    return [Image.fromarray(scene(640, 480, 11)), Image.fromarray(scene(2048, 512, 12))]


@pytest.fixture(scope="module")
def reference_soft(exported, pictures):
    return mm.reference_soft_embeddings(exported[0], mm.reference_pixels(pictures))


def test_claims_exactly_the_vision_tensors(exported):
    model, ckpt, *_ = exported
    vision = {n for n in ckpt.names() if n.startswith(("model.vision_tower.", "model.embed_vision."))}
    assert ckpt.used == vision                       # every tower tensor, shape-checked, and nothing else
    assert not any("language_model" in n for n in ckpt.used)


def test_manifest_fragment(exported):
    model, *_, fragment, _, _ = exported
    cfg = VisionConfig.from_dict(fragment["vision"])
    params = sum(p.numel() for n, p in model.model.named_parameters()
                 if n.startswith(("vision_tower.", "embed_vision.")))
    assert (cfg.vocab_offset, cfg.vocab_size, cfg.image_size, cfg.tokens_per_image) == (2048, 32, 768, 256)
    assert (cfg.begin_id, cfg.end_id, cfg.soft_id) == (mm.BOI, mm.EOI, mm.IMAGE_TOKEN)
    assert cfg.params == params and cfg.quant == "fp32"
    assert cfg.weight_bytes >= 4 * params * 0.99


def test_soft_embeddings_equal_reference_fp32(exported, pictures, reference_soft):
    _, _, fp32_dir, fragment, _, _ = exported
    pixels = np.stack([preprocess(p, 768) for p in pictures])
    encoder = VisionEncoder(vision_bundle(fp32_dir, fragment), threads=2)
    soft = encoder.encode(pixels)
    encoder.close()
    assert soft.shape == (2, 256, 64) and soft.dtype == np.float32
    for i in range(2):
        assert rel(soft[i], reference_soft[i]) <= 1e-4
    assert rel(soft[0], soft[1]) > 0.05              # the two images do give different tokens


def test_int8_within_measured_bound(exported, pictures, reference_soft):
    _, _, fp32_dir, fragment, int8_dir, int8 = exported
    pixels = np.stack([preprocess(p, 768) for p in pictures[:1]])
    soft = VisionEncoder(vision_bundle(int8_dir, int8), threads=2).encode(pixels)
    err = rel(soft[0], reference_soft[0])
    assert 1e-4 < err <= INT8_BOUND                  # quantized (not a copy of fp32), and within bound
    assert int8["vision"]["weight_bytes"] < fragment["vision"]["weight_bytes"] / 3


def test_hard_rows_equal_reference(exported):
    model, _, fp32_dir, fragment, _, _ = exported
    table = RowTable(os.path.join(fp32_dir, fragment["vision"]["hard_embeddings"]))
    assert (table.num_rows, table.groups, table.width) == (32, 1, 64)
    ours = table.gather(np.arange(32)).reshape(32, -1)
    ref = mm.reference_hard_embeddings(model, range(mm.VISION_OFFSET, mm.VISION_OFFSET + 32))
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_encoder_errors(exported, tmp_path):
    _, _, fp32_dir, fragment, _, _ = exported
    encoder = VisionEncoder(vision_bundle(fp32_dir, fragment), threads=1)
    with pytest.raises(Gemma3nError, match=r"expected pixels \[N, 3, 768, 768\]"):
        encoder.encode(np.zeros((1, 3, 256, 256), np.float32))
    no_vision = Bundle(str(tmp_path), {}, None, (), None, None, "", None, None)
    with pytest.raises(Gemma3nError, match="no vision encoder") as err:
        VisionEncoder(no_vision)
    assert "\n" not in str(err.value)


def test_checkpoint_without_vision_tower(exported, tmp_path):
    model = exported[0]
    mm.save_multimodal_checkpoint(model, str(tmp_path / "text_audio"), vision=False)
    ckpt = Checkpoint(str(tmp_path / "text_audio"))
    assert vision_part(ckpt, "fp32") is None
    assert not any(n.startswith(("model.vision_tower", "model.embed_vision")) for n in ckpt.names())


def test_stray_tower_tensors_are_ignored(tmp_path):
    from hf_reference import reference_model, save_checkpoint, tiny_text_config
    save_checkpoint(reference_model(tiny_text_config(num_layers=2, num_kv_shared_layers=0), 0), str(tmp_path))
    ckpt = Checkpoint(str(tmp_path))
    assert vision_part(ckpt, "int8") is None
    assert "model.vision_tower.timm_model.conv_stem.conv.weight" in ckpt.ignored
    assert not ckpt.used


def test_quant_none_and_bad_quant(exported):
    ckpt = Checkpoint(exported[1].dir)
    assert vision_part(ckpt, "none") is None
    assert "model.embed_vision.embedding.weight" in ckpt.ignored and not ckpt.used
    with pytest.raises(Gemma3nError, match="--vision-quant must be one of"):
        vision_part(Checkpoint(exported[1].dir), "int4")


def test_tower_that_does_not_match_its_config(exported, tmp_path):
    import json
    shutil.copytree(exported[1].dir, tmp_path / "ckpt")
    cfg_path = tmp_path / "ckpt" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["vision_config"]["model_args"] = {"channel_multiplier": 0.25}
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(Gemma3nError, match="has shape .* expected") as err:
        vision_part(Checkpoint(str(tmp_path / "ckpt")), "fp32")
    assert "\n" not in str(err.value)
