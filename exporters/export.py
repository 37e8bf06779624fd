"""Checkpoint -> bundle: the whole export, written to a temporary directory and renamed at the end,
so an interrupted export never leaves a bundle that loads."""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import replace

from tqdm import tqdm

from gemma3n_rt.bundle import FORMAT_NAME, FORMAT_VERSION, MANIFEST, SMALL_FILE, sha256_file, spot_sha256
from gemma3n_rt.config import KV_CACHES, SliceSpec
from gemma3n_rt.decoder import DEFAULT_CHUNK
from gemma3n_rt.errors import Gemma3nError
from gemma3n_rt.planner import ledger
from gemma3n_rt.prompt import SpecialTokens
from gemma3n_rt.tokenizer import Tokenizer
from .checkpoint import Checkpoint, TensorSource
from .hf_config import architecture
from .architectures import ARCHITECTURES
from .audio import audio_part
from .vision import DEFAULT_VISION_QUANT, vision_part
from .calibrate import CALIBRATION_TEXT, MAX_TOKENS, calibration_ids, measure_moments
from .onnx_graph import FLOAT
from .quantize import DEFAULT_RECIPE, HEAD, QuantRecipe, quantize_graph, quantized_linears
from .text_decoder import SlicePlan
from .writer import WeightStore, write_graph, write_row_table

QUANT_MODES = ("int4", "int8", "fp32")
TABLE_DTYPES = ("int8", "fp16", "fp32")


def open_checkpoint(path: str) -> TensorSource:
    """A Hugging Face checkpoint directory, or a .gguf file."""
    if os.path.isfile(path):
        from .gguf_checkpoint import GGUFCheckpoint
        return GGUFCheckpoint(path)
    return Checkpoint(path)


def check_tokenizer(path: str, vocab_size: int) -> Tokenizer:
    """The tokenizer must load, fit the model's vocabulary and have the chat-template tokens."""
    try:
        tok = Tokenizer(path)
        SpecialTokens.from_tokenizer(tok)
    except (ValueError, OSError) as e:
        raise Gemma3nError(str(e) if path in str(e) else f"{path}: {e}") from None
    if tok.vocab_size > vocab_size:
        raise Gemma3nError(f"{path}: {tok.vocab_size} pieces, more than the model's vocab_size {vocab_size}")
    return tok


def export(checkpoint_dir: str, out_dir: str, quant: str = "int4", tables: str = "int8", block_size: int | None = None,
           force: bool = False, show_progress: bool = True, slices: str | None = None, custom=(),
           vision_quant: str = DEFAULT_VISION_QUANT, audio_quant: str = "int8",
           head: str | None = None, asymmetric: bool | None = None, int8_linears: tuple[str, ...] | None = None,
           calibration: str | None = CALIBRATION_TEXT, head_rescore: int | None = None,
           prefill_int8: bool = False, head_block_size: int | None = None, int8_block_size: int | None = None,
           gptq: bool = True, kv_cache: str | None = None) -> dict:
    """`block_size`, `head`, `head_block_size`, `asymmetric`, `int8_linears`, `int8_block_size` and `head_rescore` default to DEFAULT_RECIPE's
    (quantize.py). `calibration`: the text that weighs the int4 grids (calibrate.py; None: plain
    min-max grids; `gptq`: with calibration, int4 values rounded by GPTQ, quantize.py). `head_rescore`: with an int4 head, how many top logits the runtime recomputes
    from the embedding row table (gemma3n_rt/head.py; 0: none). `prefill_int8`: prompt chunks run
    the attention and FFN linears as int8 x int8 matmuls on int8 copies (QuantRecipe.prefill_int8).
    `kv_cache`: the KV caches' dtype, "fp16" or "fp32" (DecoderGraph.attention); default fp16, with
    quant="fp32" fp32 (the exact export)."""
    started = time.time()
    if quant not in QUANT_MODES:
        raise Gemma3nError(f"--quant must be one of {', '.join(QUANT_MODES)}, got {quant!r}")
    if head is not None and head not in QUANT_MODES:
        raise Gemma3nError(f"--head must be one of {', '.join(QUANT_MODES)}, got {head!r}")
    recipe = QuantRecipe(quant, block_size or DEFAULT_RECIPE.block_size,
                         DEFAULT_RECIPE.asymmetric if asymmetric is None else asymmetric,
                         (DEFAULT_RECIPE.head if quant == "int4" else None) if head is None else head,
                         DEFAULT_RECIPE.int8_linears if int8_linears is None else tuple(int8_linears),
                         head_block_size=head_block_size or (DEFAULT_RECIPE.head_block_size
                                                             if quant == "int4" and head in (None, "int4") else None),
                         int8_block_size=int8_block_size or (DEFAULT_RECIPE.int8_block_size if quant == "int4" else None),
                         gptq=gptq)
    if recipe.mode_of(HEAD) == "int4":
        recipe = replace(recipe, head_rescore=DEFAULT_RECIPE.head_rescore if head_rescore is None else head_rescore)
    elif head_rescore:
        raise Gemma3nError(f"--head-rescore recomputes an int4 head's top logits; the head here is {recipe.mode_of(HEAD)}")
    if int8_block_size and quant != "int4":
        raise Gemma3nError(f"--int8-block-size sets the block of an int4 export's int8 linears; with --quant {quant} "
                           + ("use --block-size" if quant == "int8" else "there are no blocks"))
    if prefill_int8:
        if quant == "fp32":
            raise Gemma3nError("--prefill-int8 needs --quant int4 or int8")
        recipe = replace(recipe, prefill_int8=True)
    if recipe.head_rescore < 0:
        raise Gemma3nError(f"--head-rescore must be 0 or more, got {recipe.head_rescore}")
    kv_cache = kv_cache or ("fp32" if quant == "fp32" else "fp16")
    if kv_cache not in KV_CACHES:
        raise Gemma3nError(f"--kv-cache must be one of {', '.join(KV_CACHES)}, got {kv_cache!r}")
    if tables not in TABLE_DTYPES:
        raise Gemma3nError(f"--tables must be one of {', '.join(TABLE_DTYPES)}, got {tables!r}")
    out_dir = os.path.abspath(os.path.expanduser(out_dir))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise Gemma3nError(f"{out_dir}: exists and is not a directory")
    if os.path.exists(out_dir) and os.listdir(out_dir) and not force:
        raise Gemma3nError(f"{out_dir}: already exists and is not empty (use --force to replace it)")
    ckpt = open_checkpoint(os.path.expanduser(checkpoint_dir))
    # Each part claims its tensors now; a tensor no part claims is an error that names it.
    if calibration is not None and not os.path.isfile(os.path.expanduser(calibration)):
        raise Gemma3nError(f"--calibration: {calibration}: no such file")
    parts = [TextPart(ckpt, recipe, tables, slices, custom, calibration, kv_cache),
             vision_part(ckpt, vision_quant), audio_part(ckpt, audio_quant)]
    parts = [p for p in parts if p is not None]
    ckpt.finish()

    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(out_dir)}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
        manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION}
        for part in parts:
            manifest.update(part.write(tmp, show_progress))
        write_manifest(tmp, manifest)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest["seconds"] = round(time.time() - started, 2)
    return manifest


class TextPart:
    """The text decoder: row tables, the shared weights store, one graph per slice, the tokenizer."""

    def __init__(self, ckpt: TensorSource, recipe: QuantRecipe, tables: str, slices, custom, calibration: str | None,
                 kv_cache: str):
        self.arch_name = architecture(ckpt.config)
        self.arch = ARCHITECTURES[self.arch_name]
        self.src = self.arch.parse(ckpt.config, ckpt)
        self.tokenizer = ckpt.tokenizer_path
        if not os.path.isfile(self.tokenizer):
            raise Gemma3nError(f"{ckpt.dir}: no tokenizer.model (the SentencePiece model of the checkpoint)")
        tokenizer = check_tokenizer(self.tokenizer, self.src.vocab_size)
        self.weights = self.arch.take_weights(ckpt, self.src)
        self.plans = self.arch.plans(self.src, slices, custom)
        self.recipe, self.quant, self.tables, self.kv_cache = recipe, recipe.mode, tables, kv_cache
        # importance-weighted grids exist for int4 with zero points (quantize.py)
        self.calibration = calibration if recipe.mode == "int4" and recipe.asymmetric else None
        self.calibrated = None
        if self.calibration:
            self.calibration_ids = calibration_ids(tokenizer, os.path.expanduser(self.calibration),
                                                   SpecialTokens.from_tokenizer(tokenizer).bos,
                                                   min(MAX_TOKENS, self.src.text_config().max_position_embeddings))

    def write(self, tmp: str, show_progress: bool) -> dict:
        src, arch, weights, quant = self.src, self.arch, self.weights, self.quant
        os.makedirs(os.path.join(tmp, "text"))
        row_tables = {"embed": ("text/embed.safetensors", weights["embed_tokens"], 1)}
        if "embed_tokens_per_layer" in weights:
            row_tables["ple"] = ("text/ple.safetensors", weights["embed_tokens_per_layer"], src.num_layers)
        rows = sum(lazy.shape[0] for _, lazy, _ in row_tables.values())
        with tqdm(total=rows, unit="rows", desc="row tables", disable=not show_progress) as bar:
            for rel, lazy, groups in row_tables.values():
                write_row_table(os.path.join(tmp, rel), lazy, groups, self.tables, progress=bar)
        moments = self._calibrate(tmp, row_tables, show_progress) if self.calibration else None
        store = WeightStore(os.path.join(tmp, "text/weights.bin"))
        entries = []
        for plan in tqdm(self.plans, unit="slice", desc="decoder graphs", disable=not show_progress or len(self.plans) < 2):
            builder = arch.builder(src, weights, plan, self.plans)
            builder.prefill_int8, builder.kv_cache = self.recipe.prefill_int8, self.kv_cache
            graph = builder.build()
            if self.recipe.head_rescore:
                expose_head_input(graph, src.hidden_size)
            quantize_graph(graph, self.recipe, moments)
            graph_file = f"text/decoder.{plan.name}.onnx"
            sizes: dict[str, int] = {}
            with tqdm(total=len(graph.weights), unit="tensor", desc=plan.name, leave=False,
                      disable=not show_progress) as bar:
                weight_bytes = write_graph(graph, os.path.join(tmp, graph_file), store, progress=bar, sizes=sizes)
            entry = slice_entry(src, plan, builder.caches, graph_file, weight_bytes, quant, arch.effective_params(src, plan),
                                self.kv_cache, graph.gathered_bytes(sizes))
            # a one-token step takes the sparse FFN branches: what it reads is less than what is mapped
            entry["decode_bytes"] = graph.then_bytes(sizes)
            entries.append(entry)
        store.close()
        shutil.copyfile(self.tokenizer, os.path.join(tmp, "tokenizer.model"))
        return self._manifest(self.recipe, entries, row_tables)

    def _manifest(self, recipe: QuantRecipe, entries: list[dict], row_tables: dict) -> dict:
        quant = recipe.mode
        return {
            "source": {"architecture": self.arch_name, "dtype": self.src.embed_dtype},
            "text_config": _jsonable(self.src.text_config().__dict__),
            "quantization": {"decoder": quant, "block_size": recipe.block_size if quant != "fp32" else None,
                             "tables": self.tables, "head": recipe.mode_of("lm_head"),
                             "head_block_size": recipe.block_of(HEAD, self.src.hidden_size) if recipe.mode_of(HEAD) != "fp32" else None,
                             "asymmetric": recipe.asymmetric and quant != "fp32",
                             "int8_linears": list(recipe.int8_linears) if quant == "int4" else [],
                             "int8_block_size": recipe.int8_block_size if quant == "int4" and recipe.int8_linears else None,
                             "calibration": self.calibrated if quant == "int4" else None,
                             "head_rescore": recipe.head_rescore, "prefill_int8": recipe.prefill_int8,
                             "kv_cache": self.kv_cache},
            "tokenizer": "tokenizer.model",
            "row_tables": {name: rel for name, (rel, _, _) in row_tables.items()},
            "slices": entries,
        }

    def _calibrate(self, tmp: str, row_tables: dict, show_progress: bool) -> dict:
        """The second moments of every int4 linear's input (calibrate.py), measured on a
        scratch int8 bundle of the largest slice inside `tmp` that shares the row tables."""
        src, arch = self.src, self.arch
        scratch = os.path.join(tmp, ".calibration")
        os.makedirs(os.path.join(scratch, "text"))
        for rel, _, _ in row_tables.values():
            _link_or_copy(os.path.join(tmp, rel), os.path.join(scratch, rel))
        shutil.copyfile(self.tokenizer, os.path.join(scratch, "tokenizer.model"))
        plan = max(self.plans, key=lambda p: arch.effective_params(src, p))
        builder = arch.builder(src, self.weights, plan, self.plans)
        builder.sparse_decode = False   # every linear's input is then a value of the main graph, tappable
        builder.kv_cache = self.kv_cache    # as the scratch manifest says
        builder.every_position = True   # the head's input (and the final block's) at every position, not one per chunk
        graph = builder.build()
        taps: dict[str, list[str]] = {}
        for lin in quantized_linears(graph, self.recipe, "int4"):
            for node in lin.nodes:
                taps.setdefault(builder.head_input if lin.key == HEAD else node.input[0], []).append(lin.key)
        int8 = replace(self.recipe, mode="int8", head="int8", int8_linears=(), head_rescore=0)
        quantize_graph(graph, int8)
        graph_file = f"text/decoder.{plan.name}.onnx"
        store = WeightStore(os.path.join(scratch, "text/weights.bin"))
        with tqdm(total=len(graph.weights), unit="tensor", desc="calibration: int8 decoder", leave=False,
                  disable=not show_progress) as bar:
            weight_bytes = write_graph(graph, os.path.join(scratch, graph_file), store, progress=bar)
        store.close()
        entry = slice_entry(src, plan, builder.caches, graph_file, weight_bytes, "int8", arch.effective_params(src, plan),
                            self.kv_cache)
        write_manifest(scratch, {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                                 **self._manifest(int8, [entry], row_tables)})
        moments = measure_moments(scratch, graph_file, taps, self.calibration_ids, full=self.recipe.gptq)
        shutil.rmtree(scratch)
        name = "built-in" if self.calibration == CALIBRATION_TEXT else os.path.basename(self.calibration)
        self.calibrated = {"text": name, "tokens": len(self.calibration_ids), "gptq": self.recipe.gptq}
        return moments


def slice_entry(src, plan: SlicePlan, caches, graph_file: str, weight_bytes: int, quant: str,
                effective: int, kv_cache: str, gathered_bytes: int = 0) -> dict:
    """The manifest's catalog entry, with the memory ledger at 1K tokens of context for reference."""
    entry = {"name": plan.name, "graph": graph_file, "layers": list(plan.layers), "ffn_widths": list(plan.ffn_widths),
             "caches": [{"type": c.type, "source_layer": c.source_layer} for c in caches],
             "effective_params": effective, "weight_bytes": weight_bytes, "gathered_bytes": gathered_bytes}
    if "published_mmlu" in plan.meta:
        entry["published_mmlu"] = plan.meta["published_mmlu"]
        entry["published_effective_b"] = plan.meta["published_effective_b"]
    led = ledger(src.text_config(), SliceSpec.from_dict(entry), 1024, DEFAULT_CHUNK, quant, kv_cache=kv_cache)
    entry["ledger_at_1k_context"] = {"weights": led.weights, "kv": led.kv, "workspace": led.workspace, "total": led.total}
    return entry


def file_entry(path: str) -> dict:
    """size and sha256 of a bundle file, and the spot hash checked on every load of a large one."""
    entry = {"size": os.path.getsize(path), "sha256": sha256_file(path)}
    if entry["size"] > SMALL_FILE:
        entry["spot_sha256"] = spot_sha256(path)
    return entry


def expose_head_input(graph, width: int) -> None:
    """Output the normed hidden state the LM head is applied to, as "hidden" [1, D] (head.py)."""
    head = next(lin for lin in graph.linears.values() if lin.key == HEAD)
    graph.output(head.nodes[0].input[0], "hidden", FLOAT, [1, width])


def write_manifest(root: str, manifest: dict) -> None:
    """Make the files under `root` readable, list them with their hashes, and write the manifest."""
    umask = os.umask(0)
    os.umask(umask)
    for rel in _files(root):   # readable as any file the user writes (torch writes its data files 0600)
        os.chmod(os.path.join(root, rel), 0o666 & ~umask)
    manifest["files"] = {rel: file_entry(os.path.join(root, rel)) for rel in sorted(_files(root))}
    with open(os.path.join(root, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _jsonable(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _files(root: str) -> list[str]:
    return [os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs]


def _replace_dir(tmp: str, out_dir: str) -> None:
    """Move the finished bundle into place; an old bundle is removed only after the new one is there."""
    if not os.path.exists(out_dir):
        os.rename(tmp, out_dir)
        return
    old = out_dir + f".old-{os.getpid()}"
    os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(old, out_dir)      # the old bundle stays where it was
        raise
    shutil.rmtree(old, ignore_errors=True)
