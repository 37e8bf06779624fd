"""SentencePiece tokenizer wrapper and an incremental (streaming) detokenizer."""
from __future__ import annotations

import re
from pathlib import Path

import sentencepiece as spm

# Gemma's tokenizer.model stores its chat and media markers as USER_DEFINED pieces, which
# SentencePiece would match inside plain text and print when decoding; we treat them as
# control tokens: never produced by encode(), dropped by decode().
MARKER_PIECES = (
    "<bos>", "<eos>", "<pad>",
    "<start_of_turn>", "<end_of_turn>",
    "<start_of_image>", "<end_of_image>", "<image_soft_token>",
    "<start_of_audio>", "<end_of_audio>", "<audio_soft_token>",
)


class Tokenizer:
    """A SentencePiece model; encode() is plain text only, control tokens are ids."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer model not found: {path}")
        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(path))
        except RuntimeError as e:
            raise ValueError(f"{path} is not a SentencePiece model ({e})") from None
        markers = [p for p in MARKER_PIECES if self._has_piece(p)]
        self._marker_ids = frozenset(self._sp.piece_to_id(p) for p in markers)
        # Only markers that SentencePiece would match in text need splitting in encode().
        matched = [p for p in markers if self._sp.encode(p) == [self._sp.piece_to_id(p)]]
        self._matched_markers = re.compile("|".join(map(re.escape, matched))) if matched else None

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def pad_id(self) -> int:
        return self._sp.pad_id()

    def encode(self, text: str) -> list[int]:
        """Token ids of text, without BOS/EOS; marker text like "<end_of_turn>" stays text.
        Lone surrogates (undecodable bytes of a command line, say) are encoded as U+FFFD."""
        if not isinstance(text, str):
            raise ValueError(f"text to encode must be a str, got {type(text).__name__}")
        text = _well_formed(text)
        if self._matched_markers is None:
            return self._sp.encode(text)
        # Cut each marker occurrence after its "<" so SentencePiece cannot match it whole.
        # Cutting leaves the decoded text unchanged because the model adds no dummy prefix.
        cuts = [m.start() + 1 for m in self._matched_markers.finditer(text)]
        bounds = [0, *cuts, len(text)]
        return [i for a, b in zip(bounds, bounds[1:]) for i in self._sp.encode(text[a:b])]

    def decode(self, ids) -> str:
        """Text of ids; control tokens are dropped."""
        return self._sp.decode([int(i) for i in ids if int(i) not in self._marker_ids])

    def piece_id(self, piece: str) -> int:
        if not self._has_piece(piece):
            raise ValueError(f"tokenizer has no piece {piece!r}")
        return self._sp.piece_to_id(piece)

    def id_to_piece(self, token_id: int) -> str:
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is out of range [0, {self.vocab_size})")
        return self._sp.id_to_piece(int(token_id))

    def _has_piece(self, piece: str) -> bool:
        # piece_to_id() maps unknown pieces to unk_id instead of failing.
        return self._sp.id_to_piece(self._sp.piece_to_id(piece)) == piece


def _well_formed(text: str) -> str:
    """text, with each lone surrogate replaced by U+FFFD (SentencePiece takes UTF-8 only)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)


class StreamDecoder:
    """Turns a stream of token ids into text deltas whose concatenation equals
    tokenizer.decode(all ids).

    Like HF's incremental detokenizer, it decodes only a short window: ids already
    emitted as text (kept as context so piece boundaries decode as in the full text)
    plus the ids not yet emitted. Text is held back while it ends in U+FFFD, i.e. while
    byte-fallback tokens have not yet completed a UTF-8 character.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._window: list[int] = []  # context ids, then pending ids
        self._context_len = 0  # number of ids at the start of the window already emitted
        self._context_text_len = 0  # len(decode(context ids))

    def push(self, token_id: int) -> str:
        """Add one token; returns the newly completed text (possibly "")."""
        self._window.append(int(token_id))
        text = self._tokenizer.decode(self._window)
        if text.endswith("\ufffd"):
            return ""
        return self._emit(text)

    def flush(self) -> str:
        """Returns the held-back text, even if it ends in an incomplete character."""
        return self._emit(self._tokenizer.decode(self._window))

    def _emit(self, text: str) -> str:
        if len(text) <= self._context_text_len:
            return ""  # e.g. a control token: nothing new yet
        delta = text[self._context_text_len:]
        # The just-emitted ids become the context for the next window.
        self._window = self._window[self._context_len:]
        self._context_len = len(self._window)
        self._context_text_len = len(self._tokenizer.decode(self._window))
        return delta
