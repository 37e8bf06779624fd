"""Images: loading (any format Pillow opens), the reference preprocessing, adaptive windowing, and
the vision encoder session. Pillow and numpy only; the encoder is the bundle's ONNX graph.

Preprocessing equals transformers' SiglipImageProcessor (torchvision backend: what
AutoImageProcessor gives a Gemma 3n checkpoint, for SiglipImageProcessor or ...Fast alike) with
do_convert_rgb: RGB, transparency composited onto white, resized to S x S (aspect not kept) by
antialiased bilinear on uint8 (image_resize.py), x 1/255, no normalisation, [3, S, S].
"""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .bundle import Bundle
from .errors import Gemma3nError
from .image_resize import resize_bilinear
from .sessions import create_session

RESCALE = np.float32(1 / 255)    # the processor's rescale_factor, applied in float32 as torch does
MIN_RATIO = 1.2                  # windowing: Gemma 3's pan-and-scan aspect threshold
MIN_CROP = 256                   # windowing: no crop narrower than this (Gemma 3's min crop size)


def load_image(source) -> Image.Image:
    """An RGB PIL image, upright (EXIF orientation applied), from a path (str or PathLike, '~' ok),
    bytes, a PIL image, or a numpy array HxW / HxWx{1,3,4} (uint8, or float in [0, 1]).
    Transparency (alpha, palette transparency) is composited onto white, as the processor does."""
    if isinstance(source, Image.Image):
        image, name = source, "image"
    elif isinstance(source, np.ndarray):
        image, name = _from_array(source), "image array"
    elif isinstance(source, (bytes, bytearray, memoryview)):
        image, name = _open(io.BytesIO(bytes(source)), "image bytes"), "image bytes"
    elif isinstance(source, (str, os.PathLike)):
        name = os.path.expanduser(os.fspath(source))
        if not os.path.isfile(name):
            raise Gemma3nError(f"{name}: no such image file")
        image = _open(name, name)
    else:
        raise Gemma3nError(f"image: expected a path, bytes, a PIL image or a numpy array, got {type(source).__name__}")
    try:
        return to_rgb(ImageOps.exif_transpose(image))
    except (OSError, ValueError, SyntaxError) as e:
        raise Gemma3nError(f"{name}: corrupt image ({_first_line(e)})") from None


def _open(fp, name: str) -> Image.Image:
    """Open and decode fully, Pillow's decompression-bomb warning turned into an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(fp)
            image.load()
            return image
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            raise Gemma3nError(f"{name}: image too large ({_first_line(e)})") from None
        except UnidentifiedImageError:
            raise Gemma3nError(f"{name}: not an image Pillow can open") from None
        except (OSError, ValueError, SyntaxError) as e:
            raise Gemma3nError(f"{name}: corrupt image ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _from_array(a: np.ndarray) -> Image.Image:
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise Gemma3nError(f"image array: expected HxW or HxWx{{1,3,4}}, got shape {a.shape}")
    if min(a.shape[:2]) == 0:
        raise Gemma3nError(f"image array: empty image of shape {a.shape}")
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all() or a.min() < 0.0 or a.max() > 1.0:
            raise Gemma3nError("image array: float pixels must be finite and in [0, 1]")
        a = np.rint(a * 255.0).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise Gemma3nError(f"image array: expected uint8 or float pixels, got {a.dtype}")
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[a.ndim if a.ndim == 2 else a.shape[2]]
    return Image.fromarray(np.ascontiguousarray(a), mode)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB as transformers' convert_to_rgb does for PIL images: anything with alpha or palette
    transparency is composited onto white; other modes (L, P, CMYK, I;16, ...) use Pillow's convert."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def preprocess(image, size: int) -> np.ndarray:
    """float32 [3, size, size] in [0, 1]: the reference processor's pixel_values for one image
    (`image` is anything load_image takes)."""
    if not (isinstance(image, Image.Image) and image.mode == "RGB"):
        image = load_image(image)
    pixels = resize_bilinear(np.asarray(image, np.uint8), size, size)
    return np.ascontiguousarray((pixels.astype(np.float32) * RESCALE).transpose(2, 0, 1))


def crop_grid(width: int, height: int, max_crops: int, size: int = 768) -> tuple[int, int]:
    """(columns, rows) of the crop grid for adaptive windowing; (1, 1) means no crops.

    - Far from square (long side / short side >= 1.2): one row (or column) of
      round(long / short) crops along the long side, at least 2, at most max_crops, and none
      narrower than 256 px (Gemma 3's pan-and-scan rule).
    - Near square but much larger than the encoder (short side >= 2 x size): a 2 x 2 grid, each
      crop at least `size` px, when max_crops >= 4.
    - Otherwise no crops: the whole image alone is already what the encoder sees well."""
    long_side, short_side = max(width, height), min(width, height)
    if short_side < 1 or max_crops < 2:
        return 1, 1
    if long_side / short_side >= MIN_RATIO:
        n = min(max(2, int(long_side / short_side + 0.5)), max_crops, long_side // MIN_CROP)
        if n < 2 or short_side < MIN_CROP:
            return 1, 1
        return (n, 1) if width >= height else (1, n)
    if short_side >= 2 * size and max_crops >= 4:
        return 2, 2
    return 1, 1


def window_crops(image, max_crops: int = 4, size: int = 768) -> list[Image.Image]:
    """Adaptive windowing (opt-in): the whole image, then the crops of crop_grid's grid, equal in
    size and non-overlapping, in reading order (row by row, left to right). The few pixels a grid
    can't divide evenly are dropped equally from both edges. Each entry becomes its own image block."""
    image = load_image(image)
    cols, rows = crop_grid(image.width, image.height, max_crops, size)
    if cols * rows == 1:
        return [image]
    cw, ch = image.width // cols, image.height // rows
    x0, y0 = (image.width - cw * cols) // 2, (image.height - ch * rows) // 2
    crops = [image.crop((x0 + c * cw, y0 + r * ch, x0 + (c + 1) * cw, y0 + (r + 1) * ch))
             for r in range(rows) for c in range(cols)]
    return [image] + crops


class VisionEncoder:
    """The bundle's image encoder: pixels [N, 3, S, S] -> soft embeddings [N, tokens_per_image, D]."""

    def __init__(self, bundle: Bundle, threads: int | None = None):
        if bundle.vision is None:
            raise Gemma3nError(f"{bundle.path}: this bundle has no vision encoder (exported without images); "
                               f"re-export the checkpoint with --vision-quant fp32 or int8")
        self.config = bundle.vision
        # without onnxruntime's memory pattern: the real-shape tower's peak RssAnon fell from 731 to
        # 426 MiB in fp32 and from 2888 to 1511 MiB in int8 (bench/vision_encoder.py)
        self.session = create_session(bundle.file(self.config.encoder), threads, memory_pattern=False)
        self.input_name = self.session.get_inputs()[0].name
        self.width = self.session.get_outputs()[0].shape[-1]   # D

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        if self.session is None:
            raise Gemma3nError("vision encoder: used after close()")
        s = self.config.image_size
        pixels = np.asarray(pixels, np.float32)
        if pixels.ndim != 4 or pixels.shape[1:] != (3, s, s):
            raise Gemma3nError(f"vision encoder: expected pixels [N, 3, {s}, {s}], got {list(pixels.shape)}")
        # one image per run: the activations of one 768 px image are the workspace, whatever N is
        out = [self.session.run(None, {self.input_name: pixels[i:i + 1]})[0] for i in range(len(pixels))]
        return np.concatenate(out) if out else np.zeros((0, self.config.tokens_per_image, self.width), np.float32)

    def close(self) -> None:
        self.session = None
