"""Files from strangers: checkpoints, GGUF files and bundles are parsed as untrusted input. Nothing
is unpickled; a header or config that lies gets one clear error naming the file, before anything is
sized by it; nothing outside a checkpoint directory is read through a symlink."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import tracemalloc

import gguf
import numpy as np
import pytest

import exporters
import gemma3n_rt
from bench.synthetic import write_random_checkpoint
from exporters.export import export
from exporters.gguf_checkpoint import GGUFCheckpoint
from gemma3n_rt.errors import Gemma3nError
from gemma3n_rt.safetensors_file import SafetensorsFile

TINY = {"model_type": "gemma3n_text", "hidden_size": 32, "num_hidden_layers": 35, "intermediate_size": [64] * 35,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "hidden_size_per_layer_input": 8,
        "vocab_size": 2048 + 64, "vocab_size_per_layer_input": 2048, "laurel_rank": 4,
        "num_kv_shared_layers": 15, "sliding_window": 16, "max_position_embeddings": 4096,
        "activation_sparsity_pattern": [0.95] * 10 + [0.0] * 25, "final_logit_softcapping": 30.0}
HUGE = 64 << 20     # no refusal below may allocate anywhere near this much


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, demo_tokenizer_path):
    ckpt = tmp_path_factory.mktemp("untrusted") / "ckpt"
    write_random_checkpoint(str(ckpt), TINY, seed=0, tokenizer=str(demo_tokenizer_path))
    return ckpt


def copy_checkpoint(checkpoint, tmp_path):
    out = tmp_path / "ckpt"
    shutil.copytree(checkpoint, out)
    return out


def refused(fn, *needles) -> str:
    """fn() raises Gemma3nError: one line naming every needle, without allocating much."""
    tracemalloc.start()
    try:
        with pytest.raises(Gemma3nError) as e:
            fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(e.value)
    assert "\n" not in message
    for needle in needles:
        assert str(needle) in message, f"{needle!r} not in {message!r}"
    assert peak < HUGE, f"allocated {peak} bytes before refusing"
    return message


# --- no pickle -----------------------------------------------------------------------------------

@pytest.mark.parametrize("package", [gemma3n_rt, exporters])
def test_no_pickle_in_the_sources(package):
    root = os.path.dirname(package.__file__)
    for folder, _, names in os.walk(root):
        for name in names:
            if name.endswith(".py"):
                text = open(os.path.join(folder, name), encoding="utf-8").read()
                for word in ("pickle", "torch.load", "allow_pickle", "np.load(", "numpy.load(", "marshal"):
                    assert word not in text, f"{os.path.join(folder, name)} mentions {word}"


def test_export_and_generate_never_unpickle(checkpoint, tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling")
    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    export(str(checkpoint), str(tmp_path / "bundle"), quant="int8", tables="int8", show_progress=False, slices="E2B")
    model = gemma3n_rt.load(str(tmp_path / "bundle"))
    assert isinstance(model.generate("Hi", max_new_tokens=2, temperature=0), str)


# --- safetensors headers that lie ----------------------------------------------------------------

def write_safetensors(path, header, data: bytes = b"\0" * 64, header_len: int | None = None) -> str:
    blob = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob) if header_len is None else header_len) + blob + data)
    return str(path)


@pytest.mark.parametrize("header, needle", [
    ({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64 + 4096]}}, "inconsistent byte range"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [32, 16]}}, "data_offsets"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [-16, 0]}}, "data_offsets"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16.5]}}, "data_offsets"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0]}}, "data_offsets"),
    ({"w": {"dtype": "F64", "shape": [4, 4], "data_offsets": [0, 64]}}, "inconsistent byte range"),
    ({"w": {"dtype": "Q4_K", "shape": [4], "data_offsets": [0, 16]}}, "unsupported dtype"),
    ({"w": {"dtype": 7, "shape": [4], "data_offsets": [0, 16]}}, "unsupported dtype"),
    ({"w": {"dtype": "F32", "shape": [-4, -4], "data_offsets": [0, 64]}}, "invalid shape"),
    ({"w": {"dtype": "F32", "shape": "4x4", "data_offsets": [0, 64]}}, "invalid shape"),
    ({"w": {"dtype": "F32", "shape": [True, 4], "data_offsets": [0, 16]}}, "invalid shape"),
    # 2^32 x 2^32 floats is 2^66 bytes, 0 in 64-bit arithmetic: must not pass for an empty tensor
    ({"w": {"dtype": "F32", "shape": [1 << 32, 1 << 32], "data_offsets": [0, 0]}}, "inconsistent byte range"),
    ({"w": {"dtype": "F32", "shape": [4]}}, "needs dtype, shape and data_offsets"),
    ({"w": [1, 2, 3]}, "needs dtype, shape and data_offsets"),
])
def test_safetensors_header_that_lies(tmp_path, header, needle):
    path = write_safetensors(tmp_path / "x.safetensors", header)
    refused(lambda: SafetensorsFile(path), path, "tensor w", needle)


@pytest.mark.parametrize("header, header_len, needle", [
    ([1, 2], None, "not a JSON object"),
    ({"__metadata__": [1]}, None, "__metadata__"),
    ({}, 1 << 40, "bad header length"),
    ("[" * 100_000, None, "header is not JSON"),
])
def test_safetensors_header_that_is_not_one(tmp_path, header, header_len, needle):
    path = tmp_path / "x.safetensors"
    if isinstance(header, str):
        blob = header.encode()
        path.write_bytes(struct.pack("<Q", len(blob)) + blob)
        path = str(path)
    else:
        path = write_safetensors(path, header, header_len=header_len)
    refused(lambda: SafetensorsFile(path), path, needle)


def test_export_of_a_lying_shard_is_refused(checkpoint, tmp_path):
    ckpt = copy_checkpoint(checkpoint, tmp_path)
    shard = next(ckpt.glob("model-*.safetensors"))
    with open(shard, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        name = next(k for k in header if k != "__metadata__")
        header[name]["shape"] = [1 << 32, 1 << 32]
        header[name]["data_offsets"] = [0, 0]
        blob = json.dumps(header, separators=(",", ":")).encode().ljust(n)
        assert len(blob) == n
        f.seek(8)
        f.write(blob)
    refused(lambda: export(str(ckpt), str(tmp_path / "out"), show_progress=False), shard, name)
    assert not (tmp_path / "out").exists()


# --- config.json with absurd sizes ---------------------------------------------------------------

@pytest.mark.parametrize("change, needle", [
    ({"num_hidden_layers": 10**12}, "num_hidden_layers"),
    ({"num_hidden_layers": -3}, "num_hidden_layers"),
    ({"hidden_size": -32}, "hidden_size"),
    ({"hidden_size": "32"}, "hidden_size"),
    ({"vocab_size": 10**12}, "vocab_size"),
    ({"vocab_size_per_layer_input": 0}, "vocab_size_per_layer_input"),
    ({"intermediate_size": [-64] * 35}, "intermediate_size"),
    ({"intermediate_size": [64.5] * 35}, "intermediate_size"),
    ({"intermediate_size": 10**15}, "intermediate_size"),
    ({"num_attention_heads": 0}, "num_attention_heads"),
    ({"head_dim": 1 << 40}, "head_dim"),
    ({"num_kv_shared_layers": -1}, "num_kv_shared_layers"),
    ({"max_position_embeddings": 10**18}, "max_position_embeddings"),
    ({"activation_sparsity_pattern": [2.0] * 35}, "activation_sparsity_pattern"),
    ({"rms_norm_eps": "tiny"}, "rms_norm_eps"),
    ({"layer_types": "sliding_attention"}, "layer_types"),
    ({"num_hidden_layers": True}, "num_hidden_layers"),
])
def test_config_with_absurd_sizes(checkpoint, tmp_path, change, needle):
    ckpt = copy_checkpoint(checkpoint, tmp_path)
    config = json.loads((ckpt / "config.json").read_text())
    config["text_config"].update(change)
    (ckpt / "config.json").write_text(json.dumps(config))
    refused(lambda: export(str(ckpt), str(tmp_path / "out"), show_progress=False), "config.json", needle)
    assert not (tmp_path / "out").exists()


def test_gemma3_config_with_absurd_sizes():
    from exporters.hf_config import parse_gemma3
    config = {"model_type": "gemma3_text", "num_hidden_layers": 10**12, "hidden_size": 640,
              "num_attention_heads": 4, "num_key_value_heads": 1, "intermediate_size": 2048, "vocab_size": 262144}
    refused(lambda: parse_gemma3(config), "config.json", "num_hidden_layers")
    refused(lambda: parse_gemma3({**config, "num_hidden_layers": 18, "vocab_size": -1}), "vocab_size")


# --- GGUF files whose sizes overflow --------------------------------------------------------------

def write_gguf(path, tokens=("a", "b")) -> bytearray:
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_block_count(1)
    w.add_token_list(list(tokens))
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return bytearray(path.read_bytes())


@pytest.mark.parametrize("dims", [(1 << 32, 1 << 32), (1 << 40, 4), (1 << 63, 2), (0xFFFFFFFFFFFFFFFF, 1)])
def test_gguf_tensor_sizes_that_overflow(tmp_path, dims):
    path = tmp_path / "x.gguf"
    data = write_gguf(path)
    at = data.find(b"token_embd.weight") + len(b"token_embd.weight")
    assert struct.unpack_from("<I", data, at)[0] == 2       # n_dims, then the dims
    struct.pack_into("<QQ", data, at + 4, *dims)
    path.write_bytes(data)
    refused(lambda: GGUFCheckpoint(str(path)), path, "not a readable GGUF file")


def test_gguf_array_length_that_overflows(tmp_path):
    path = tmp_path / "x.gguf"
    data = write_gguf(path)
    at = data.find(b"tokenizer.ggml.tokens") + len(b"tokenizer.ggml.tokens")
    assert struct.unpack_from("<IIQ", data, at) == (9, 8, 2)     # array of 2 strings
    struct.pack_into("<Q", data, at + 8, 1 << 62)
    path.write_bytes(data)
    refused(lambda: GGUFCheckpoint(str(path)), path, "not a readable GGUF file")


def test_gguf_cut_short_anywhere(tmp_path):
    data = write_gguf(tmp_path / "full.gguf")
    path = tmp_path / "x.gguf"
    for n in range(0, len(data), 5):
        path.write_bytes(data[:n])
        refused(lambda: GGUFCheckpoint(str(path)), path)


# --- symlinks out of the checkpoint directory ----------------------------------------------------

def test_symlinked_tokenizer_outside_is_refused(checkpoint, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the bundle")
    ckpt = copy_checkpoint(checkpoint, tmp_path)
    (ckpt / "tokenizer.model").unlink()
    (ckpt / "tokenizer.model").symlink_to(secret)
    refused(lambda: export(str(ckpt), str(tmp_path / "out"), show_progress=False), "tokenizer.model",
            "outside the checkpoint directory")
    assert not (tmp_path / "out").exists()


def test_symlinked_shard_outside_is_refused(checkpoint, tmp_path):
    ckpt = copy_checkpoint(checkpoint, tmp_path)
    shard = next(ckpt.glob("model-*.safetensors"))
    outside = tmp_path / "elsewhere.safetensors"
    shard.rename(outside)
    shard.symlink_to(outside)
    refused(lambda: export(str(ckpt), str(tmp_path / "out"), show_progress=False), shard.name,
            "outside the checkpoint directory")


def test_index_naming_a_file_outside_is_refused(checkpoint, tmp_path):
    ckpt = copy_checkpoint(checkpoint, tmp_path)
    shard = next(ckpt.glob("model-*.safetensors"))
    shard.rename(tmp_path / shard.name)
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: f"../{shard.name}" for k in index["weight_map"]}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    refused(lambda: export(str(ckpt), str(tmp_path / "out"), show_progress=False), shard.name,
            "outside the checkpoint directory")


def test_hugging_face_cache_layout_is_accepted(checkpoint, tmp_path):
    """The hub cache links snapshots/REV/FILE to ../../blobs/HASH, inside the repository's cache."""
    repo = tmp_path / "models--google--tiny"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    for i, f in enumerate(sorted(checkpoint.iterdir())):
        blob = repo / "blobs" / f"hash{i}"
        shutil.copyfile(f, blob)
        (snapshot / f.name).symlink_to(os.path.join("..", "..", "blobs", blob.name))
    export(str(snapshot), str(tmp_path / "out"), show_progress=False, slices="E2B")
    assert (tmp_path / "out" / "manifest.json").is_file()
