"""Images without a model: loading, preprocessing against the reference processor, errors, windowing."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from gemma3n_rt.errors import Gemma3nError
from gemma3n_rt.image_resize import resize_bilinear
from gemma3n_rt.vision import crop_grid, load_image, preprocess, window_crops

mm_reference = pytest.importorskip("mm_reference")
SIZE = 768


def scene(width: int, height: int, seed: int = 0) -> np.ndarray:
    """An RGB test picture: gradients, a bright off-centre block (so orientation shows) and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([255 * x / width, 255 * y / height, 128 + 100 * np.sin(x / 17.0) * np.cos(y / 23.0)], -1)
    img[: height // 4, : width // 3] = (250, 20, 40)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def save(img: Image.Image, path, **kw) -> str:
    img.save(path, **kw)
    return str(path)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """name -> path of each image kind the reference parity must hold for."""
    d = tmp_path_factory.mktemp("images")
    rgb = Image.fromarray(scene(500, 300))
    exif = Image.Exif()
    exif[0x0112] = 6                           # Orientation: rotate 90 degrees clockwise to display
    rgba = np.dstack([scene(420, 360, 1), np.linspace(0, 255, 420 * 360).reshape(360, 420).astype(np.uint8)])
    palette = Image.fromarray(scene(330, 270, 2)).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    transparent = palette.copy()
    transparent.info["transparency"] = 3
    return {
        "png": save(rgb, d / "rgb.png"),
        "jpeg_exif_rotated": save(Image.fromarray(scene(640, 400, 3)), d / "rotated.jpg", quality=90, exif=exif),
        "grayscale": save(Image.fromarray(scene(350, 500, 4)[:, :, 0]), d / "gray.png"),
        "palette": save(palette, d / "palette.png"),
        "palette_transparency": save(transparent, d / "palette_t.png", transparency=3),
        "rgba": save(Image.fromarray(rgba, "RGBA"), d / "rgba.png"),
        "cmyk_jpeg": save(Image.fromarray(scene(300, 300, 5)).convert("CMYK"), d / "cmyk.jpg"),
        "panorama_4to1": save(Image.fromarray(scene(2048, 512, 6)), d / "pano.png"),
        "upscaled_small": save(Image.fromarray(scene(97, 61, 7)), d / "small.png"),
    }


@pytest.mark.parametrize("kind", ["png", "jpeg_exif_rotated", "grayscale", "palette", "palette_transparency",
                                  "rgba", "cmyk_jpeg", "panorama_4to1", "upscaled_small"])
def test_preprocess_equals_reference_processor(images, kind):
    # the reference gets what transformers' load_image would open: the upright PIL image, its mode kept
    reference = mm_reference.reference_pixels([ImageOps.exif_transpose(Image.open(images[kind]))])[0]
    ours = preprocess(images[kind], SIZE)
    assert ours.shape == (3, SIZE, SIZE) and ours.dtype == np.float32
    assert np.abs(ours - reference).max() <= 1e-6


def test_exif_orientation_is_applied(images):
    stored = Image.open(images["jpeg_exif_rotated"])
    assert stored.size == (640, 400)
    upright = load_image(images["jpeg_exif_rotated"])
    assert upright.size == (400, 640)
    # the red block sat top-left (100 x 213 px); rotated 90 degrees clockwise it is top-right, 213 x 100
    a = np.asarray(upright, np.float32)
    assert a[:200, -95:, 0].mean() > 230 and a[:200, -95:, 1].mean() < 60
    assert a[:200, :95, 1].mean() > 60


def test_transparency_goes_onto_white(images):
    rgba = np.asarray(Image.open(images["rgba"]), np.float32)
    ours = np.asarray(load_image(images["rgba"]), np.float32)
    alpha = rgba[:, :, 3:] / 255
    np.testing.assert_allclose(ours, rgba[:, :, :3] * alpha + 255 * (1 - alpha), atol=1.01)
    assert ours[0, 0].tolist() == [255, 255, 255]       # alpha 0 in the first pixel


def test_resize_matches_reference_kernel_on_odd_sizes():
    import torch
    from torchvision.transforms.v2 import functional as F
    rng = np.random.default_rng(1)
    for h, w, oh, ow in [(1203, 97, 768, 768), (769, 767, 768, 768), (50, 4000, 300, 200), (10, 10, 768, 5)]:
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref = F.resize(torch.from_numpy(a).permute(2, 0, 1).contiguous(), [oh, ow],
                       interpolation=F.InterpolationMode.BILINEAR, antialias=True).permute(1, 2, 0).numpy()
        assert np.array_equal(resize_bilinear(a, oh, ow), ref), (h, w, oh, ow)


def test_sources_give_the_same_image(images, tmp_path, monkeypatch):
    path = images["png"]
    base = np.asarray(load_image(path))
    with open(path, "rb") as f:
        data = f.read()
    assert np.array_equal(np.asarray(load_image(data)), base)
    assert np.array_equal(np.asarray(load_image(Image.open(path))), base)
    assert np.array_equal(np.asarray(load_image(base)), base)
    assert np.array_equal(np.asarray(load_image(base.astype(np.float32) / 255)), base)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "cat.png").write_bytes(data)
    assert np.array_equal(np.asarray(load_image("~/cat.png")), base)


def test_numpy_channels():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    for a in (gray, gray[:, :, None]):
        out = np.asarray(load_image(a))
        assert out.shape == (3, 4, 3) and np.array_equal(out[:, :, 1], gray)
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[0, 0] = (10, 20, 30, 255)
    assert np.asarray(load_image(rgba))[0, 0].tolist() == [10, 20, 30]


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 4, 2), np.uint8), "HxWx{1,3,4}"),
    (np.full((4, 4), 1.5, np.float32), "in [0, 1]"),
    (np.zeros((4, 4), np.int32), "uint8 or float"),
    (12, "expected a path"),
])
def test_bad_arrays_and_types_are_one_line_errors(bad, message):
    with pytest.raises(Gemma3nError) as err:
        load_image(bad)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_file_errors_are_one_line(tmp_path):
    good = io.BytesIO()
    Image.fromarray(scene(64, 64)).save(good, format="PNG")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture\n" * 20)
    bomb = tmp_path / "huge.png"
    Image.new("1", (10_000, 10_000)).save(bomb)        # 100 megapixels, a few kilobytes on disk
    cases = [(corrupt, "corrupt image"), (text, "not an image Pillow can open"),
             (bomb, "image too large"), (tmp_path / "missing.png", "no such image file")]
    for path, message in cases:
        with pytest.raises(Gemma3nError) as err:
            load_image(str(path))
        text_ = str(err.value)
        assert text_.startswith(str(path)) and message in text_ and "\n" not in text_, text_
    with pytest.raises(Gemma3nError, match="image bytes: not an image"):
        load_image(b"GIF89a but not really")


@pytest.mark.parametrize("size, max_crops, grid", [
    ((768, 768), 4, (1, 1)),        # square and small: the whole image alone
    ((1000, 900), 4, (1, 1)),       # ratio 1.11 < 1.2
    ((1200, 1000), 4, (2, 1)),      # ratio 1.2: at least two crops
    ((2048, 512), 4, (4, 1)),       # 4:1 panorama
    ((2048, 512), 2, (2, 1)),       # capped by max_crops
    ((512, 2600), 4, (1, 4)),       # portrait strip: round(5.08) = 5, capped at 4
    ((900, 300), 8, (3, 1)),        # ratio 3
    ((600, 200), 4, (1, 1)),        # short side under 256 px: crops would be too small
    ((2000, 1800), 4, (2, 2)),      # near square, short side >= 2 x 768: 2 x 2
    ((2000, 1800), 3, (1, 1)),      # ...but only with room for 4 crops
    ((1000, 1000), 1, (1, 1)),
])
def test_crop_grid(size, max_crops, grid):
    assert crop_grid(*size, max_crops) == grid


def test_window_crops_tile_the_image():
    pano = Image.fromarray(scene(2050, 512))            # 2 px the 4 columns can't divide
    out = window_crops(pano, max_crops=4)
    assert len(out) == 5 and out[0].size == (2050, 512)
    whole = np.asarray(out[0])
    for i, crop in enumerate(out[1:]):
        assert crop.size == (512, 512)
        assert np.array_equal(np.asarray(crop), whole[:, 1 + 512 * i: 1 + 512 * (i + 1)])
    big = window_crops(Image.fromarray(scene(1600, 1537)), max_crops=4)
    assert [c.size for c in big] == [(1600, 1537)] + [(800, 768)] * 4
    assert np.array_equal(np.asarray(big[4]), np.asarray(big[0])[768:1536, 800:])
    assert len(window_crops(Image.fromarray(scene(800, 700)), max_crops=4)) == 1
