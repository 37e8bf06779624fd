"""The vision part of an export: the MobileNet-V5 tower with embed_vision's soft path as one ONNX
graph (pixels [N, 3, S, S] in [0, 1] -> soft embeddings [N, tokens, D]), and embed_vision's hard
path precomputed as a row table. torch and timm are imported here, at export time only.

Memory: the tower is built on torch's meta device and each checkpoint tensor is read once, straight
into its parameter; the text tables are never read."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np

from gemma3n_rt.errors import Gemma3nError
from .checkpoint import Lazy, TensorSource
from .writer import write_row_table

TOWER = "model.vision_tower.timm_model."
EMBED = "model.embed_vision."
VISION_QUANTS = ("fp32", "int8", "none")
# int8 (weight-only, per channel): 2.6-2.8 % relative error in the tiny tower's soft tokens (greedy
# ids unchanged), 4x smaller on disk, but more memory while running (README "Images"): fp32 is the default.
DEFAULT_VISION_QUANT = "fp32"
DEFAULT_IMAGE_SIZE = 768
ENCODER, HARD = "vision/encoder.onnx", "vision/hard.safetensors"


def vision_part(ckpt: TensorSource, quant: str) -> "VisionPart | None":
    """Claim the vision tensors of `ckpt`; None when the checkpoint has no vision tower or quant is
    "none" (the tower's tensors, and any stray ones, are then ignored)."""
    if quant not in VISION_QUANTS:
        raise Gemma3nError(f"--vision-quant must be one of {', '.join(VISION_QUANTS)}, got {quant!r}")
    if quant == "none" or not any(n.startswith(EMBED) for n in ckpt.names()):
        ckpt.ignore(r"model\.vision_tower\..*|model\.embed_vision\..*")
        return None
    cfg = ckpt.config
    vcfg = cfg.get("vision_config") or {}
    text_hidden = (cfg.get("text_config") or {}).get("hidden_size")
    arch = vcfg.get("architecture")
    if not arch or text_hidden is None:
        raise Gemma3nError(f"{ckpt.dir}: config.json has no vision_config.architecture or text_config.hidden_size")
    tower_shapes = timm_state_shapes(arch, vcfg.get("model_args") or {})
    unknown = sorted(n for n in ckpt.names() if n.startswith(TOWER) and n[len(TOWER):] not in tower_shapes)
    if unknown:
        raise Gemma3nError(f"{ckpt.dir}: {len(unknown)} vision tower tensors, e.g. {unknown[0]}, "
                           f"are not in timm's {arch}{vcfg.get('model_args') or ''}")
    hidden, vocab = int(vcfg.get("hidden_size", 2048)), int(vcfg.get("vocab_size", 128))
    tower = {k: ckpt.take(TOWER + k, shape) for k, shape in tower_shapes.items()}
    embed = {"embedding.weight": ckpt.take(EMBED + "embedding.weight", (vocab, hidden)),
             "hard_embedding_norm.weight": ckpt.take(EMBED + "hard_embedding_norm.weight", (hidden,)),
             "soft_embedding_norm.weight": ckpt.take(EMBED + "soft_embedding_norm.weight", (hidden,)),
             "embedding_projection.weight": ckpt.take(EMBED + "embedding_projection.weight", (text_hidden, hidden))}
    # a key config.json leaves out takes transformers' Gemma3nConfig default, as the reference does
    ids = dict(offset=int(vcfg.get("vocab_offset", 262_144)), tokens=int(cfg.get("vision_soft_tokens_per_image", 256)),
               begin=int(cfg.get("boi_token_id", 255_999)), end=int(cfg.get("eoi_token_id", 262_144)),
               soft=int(cfg.get("image_token_id", 262_145)))
    return VisionPart(arch, dict(vcfg.get("model_args") or {}), hidden, vocab, int(text_hidden),
                      float(vcfg.get("rms_norm_eps", 1e-6)), image_size(ckpt.dir), ids, tower, embed, quant)


def image_size(ckpt_dir: str) -> int:
    """The encoder input size: the checkpoint's preprocessor_config.json size, else 768."""
    path = os.path.join(ckpt_dir, "preprocessor_config.json")
    if not os.path.isfile(path):
        return DEFAULT_IMAGE_SIZE
    with open(path) as f:
        size = json.load(f).get("size") or {}
    h, w = size.get("height", DEFAULT_IMAGE_SIZE), size.get("width", DEFAULT_IMAGE_SIZE)
    if h != w:
        raise Gemma3nError(f"{path}: image size {h}x{w} is not square")
    return int(h)


def timm_state_shapes(arch: str, model_args: dict) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the timm model's state dict, from a meta-device build (no memory)."""
    return {k: tuple(v.shape) for k, v in build_tower(arch, model_args).state_dict().items()}


def build_tower(arch: str, model_args: dict):
    """The timm model as Hugging Face's TimmWrapperModel builds it, on the meta device."""
    try:
        import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter needs it later)
        import timm
        import torch
    except ImportError as e:
        raise Gemma3nError(f"exporting the vision tower needs torch, timm and onnxscript ({e}); "
                           f"pip install 'gemma3n-rt[towers]', or pass --vision-quant none") from None
    with torch.device("meta"):
        try:
            return timm.create_model(arch, pretrained=False, num_classes=0, **model_args).eval()
        except RuntimeError as e:
            raise Gemma3nError(f"timm could not build vision architecture {arch!r}: {e}") from None


@dataclass
class VisionPart:
    arch: str
    model_args: dict
    hidden: int                 # tower output channels (2048)
    vocab: int                  # embed_vision rows
    text_hidden: int            # D
    eps: float
    image_size: int
    ids: dict
    tower: dict[str, Lazy]
    embed: dict[str, Lazy]
    quant: str

    @property
    def params(self) -> int:
        return sum(math.prod(t.shape) for t in (*self.tower.values(), *self.embed.values()))

    def write(self, tmp_dir: str, show_progress: bool) -> dict:
        os.makedirs(os.path.join(tmp_dir, "vision"), exist_ok=True)
        hard = hard_rows(self.embedder(), self.vocab)
        write_row_table(os.path.join(tmp_dir, HARD), Lazy("vision hard rows", hard.shape, lambda: hard), 1, "fp32")
        weight_bytes = export_encoder(self.module, os.path.join(tmp_dir, ENCODER), self.image_size, self.quant)
        return {"vision": {
            "encoder": ENCODER, "hard_embeddings": HARD, "vocab_offset": self.ids["offset"], "vocab_size": self.vocab,
            "image_size": self.image_size, "tokens_per_image": self.ids["tokens"], "begin_id": self.ids["begin"],
            "end_id": self.ids["end"], "soft_id": self.ids["soft"], "quant": self.quant,
            "weight_bytes": weight_bytes, "params": self.params}}

    def module(self):
        """The torch encoder with the checkpoint's weights, each tensor read once."""
        from .vision_torch import SoftEncoder
        tower = build_tower(self.arch, self.model_args)
        load_tensors(tower, self.tower)
        return SoftEncoder(tower, self.embedder(), self.ids["tokens"]).eval()

    def embedder(self):
        from .vision_torch import VisionEmbedder
        embed = VisionEmbedder(self.hidden, self.text_hidden, self.vocab, self.eps)
        load_tensors(embed, self.embed)
        return embed


def load_tensors(module, lazies: dict[str, Lazy]) -> None:
    """Replace every state-dict entry of `module` (possibly on the meta device) by the checkpoint's."""
    import torch
    state = {k: torch.from_numpy(np.array(lazy.load(), np.float32)) for k, lazy in lazies.items()}
    module.load_state_dict(state, strict=True, assign=True)


def hard_rows(embed, vocab: int) -> np.ndarray:
    """embed_vision's hard path for every vision id, [vocab, D] float32 (the row table's groups=1 rows)."""
    import torch
    with torch.no_grad():
        rows = embed.hard(torch.arange(vocab))
    return rows.float().numpy()


def export_encoder(make_module, path: str, size: int, quant: str) -> int:
    """torch.onnx (dynamo) export with a dynamic batch, written as `path` + `path`.data; int8 stores
    the weights in int8 (vision_quant). Returns the bytes of the graph's weights."""
    import onnx
    import torch
    from .vision_quant import quantize_weights
    batch = torch.export.Dim("batch", min=1, max=64)
    module = make_module()
    with torch.no_grad():
        program = torch.onnx.export(module, (torch.rand(1, 3, size, size),), input_names=["pixels"],
                                    output_names=["soft_embeddings"], dynamic_shapes={"pixels": {0: batch}},
                                    dynamo=True, optimize=False, verbose=False)
    data = path + ".data"
    for stale in (path, data):     # onnx appends to an existing data file
        if os.path.exists(stale):
            os.remove(stale)
    if quant == "fp32":
        program.save(path, external_data=True)     # streams the weights out to `path`.data
        del program, module
        model = onnx.load(path, load_external_data=False)
    else:
        traced = path + ".traced.onnx"
        program.save(traced, external_data=True)
        del program, module
        model = onnx.load(traced)                  # the tower's weights only
        os.remove(traced)
        os.remove(traced + ".data")
        quantize_weights(model)
    for node in model.graph.node:  # the exporter's per-node stack traces: megabytes of text
        del node.metadata_props[:]
        node.doc_string = ""
    if quant == "fp32":
        onnx.save_model(model, path)               # the graph only; the weights stay in `path`.data
    else:
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=os.path.basename(data), size_threshold=1024)
    os.chmod(data, 0o644)
    return initializer_bytes(path)


def initializer_bytes(path: str) -> int:
    import onnx
    model = onnx.load(path, load_external_data=False)
    total = 0
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            total += int(next(e.value for e in t.external_data if e.key == "length"))
        else:
            total += len(t.raw_data) or onnx.numpy_helper.to_array(t).nbytes
    return total
