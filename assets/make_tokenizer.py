"""Train the small demo SentencePiece tokenizer (Gemma-style special pieces, 2048 pieces).

The corpus is the docstrings of a fixed list of stdlib modules plus a few chat-like lines,
and training is single-threaded without sampling or shuffling, so for a given Python
version two runs give byte-identical models.

Usage: python assets/make_tokenizer.py OUT   (OUT: a directory or a .model file path)
"""
from __future__ import annotations

import importlib
import inspect
import io
import sys
from pathlib import Path

import sentencepiece as spm

CORPUS_MODULES = (
    "argparse", "calendar", "collections", "dataclasses", "datetime", "decimal", "difflib",
    "email.message", "email.utils", "enum", "fractions", "functools", "heapq", "http.client",
    "http.cookiejar", "inspect", "itertools", "json", "logging", "pathlib", "random",
    "shutil", "statistics", "string", "subprocess", "tarfile", "textwrap", "threading",
    "unittest.case", "zipfile",
)

CHAT_LINES = (
    "Hello! How are you today?",
    "I'm fine, thank you. What would you like to talk about?",
    "Can you explain how a tokenizer works in simple words?",
    "A tokenizer splits text into small pieces and maps each piece to a number.",
    "What is the capital of France?",
    "The capital of France is Paris.",
    "Please write a short poem about the sea.",
    "Sure, here is a short poem about the sea: waves roll in and whisper to the shore.",
    "Thanks, that was helpful. Can you summarize it in one sentence?",
    "Of course. The model reads the prompt and answers one token at a time.",
    "What's the weather like tomorrow? I think it will be sunny with a light breeze.",
    "Let me know if you have any other questions.",
)

CONTROL_SYMBOLS = (
    "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
    "<start_of_audio>", "<end_of_audio>",
)


def _own_docstrings(module) -> list[str]:
    """Docstrings of the module and of the classes, functions and methods it defines."""
    docs = [module.__doc__]
    for _, obj in sorted(vars(module).items()):
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if getattr(obj, "__module__", None) != module.__name__:
            continue  # re-exported from elsewhere; its own module covers it
        docs.append(obj.__doc__)
        if inspect.isclass(obj):
            docs += [m.__doc__ for _, m in sorted(vars(obj).items()) if inspect.isfunction(m)]
    return [inspect.cleandoc(d) for d in docs if isinstance(d, str)]


def corpus_lines() -> list[str]:
    """The training corpus, one sentence per line, in a fixed order without duplicates."""
    lines: dict[str, None] = {}  # insertion-ordered set
    for name in sorted(CORPUS_MODULES):
        for doc in _own_docstrings(importlib.import_module(name)):
            lines.update((line, None) for line in doc.splitlines() if line.strip())
    lines.update((line, None) for line in CHAT_LINES)
    return list(lines)


def train_demo_tokenizer(out_path: str | Path) -> Path:
    """Train the demo tokenizer; writes OUT/tokenizer.model if out_path is a directory,
    else out_path itself. Returns the written path."""
    out = Path(out_path)
    if out.is_dir():
        out = out / "tokenizer.model"
    model = io.BytesIO()
    # The corpus goes in through an iterator rather than a temp file because the trainer
    # records the input file name in the model, which would make runs differ.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()),
        model_writer=model,
        model_type="bpe",
        vocab_size=2048,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=False,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        control_symbols=list(CONTROL_SYMBOLS),
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(model.getvalue())
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    print(train_demo_tokenizer(sys.argv[1]))
