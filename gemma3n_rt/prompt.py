"""Gemma 3 / 3n chat template, rendered to token ids with control tokens inserted as ids.

A conversation renders as (HF's Gemma 3n template; a system message is prepended to the
first user turn):

    <bos><start_of_turn>user\n{system}\n\n{user}<end_of_turn>\n
    <start_of_turn>model\n{reply}<end_of_turn>\n
    <start_of_turn>model\n                        <- generation prompt

A message's content is a string or a list of parts (the Hugging Face chat format): text parts
are trimmed and joined; an image or audio part becomes a media block, as the processor expands
it: "\n\n" <start_of_image> N x <image_soft_token> <end_of_image> "\n\n" (audio alike). Text
between two control tokens is encoded as one segment, so "\n\n" merges with the text beside it
exactly as the reference tokenizer sees it. Text is never parsed for control tokens: a literal
"<start_of_turn>" in a prompt stays text.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from .tokenizer import Tokenizer


class _Control(enum.Enum):
    BOS = "<bos>"
    START_OF_TURN = "<start_of_turn>"
    END_OF_TURN = "<end_of_turn>"


@dataclass(frozen=True)
class SpecialTokens:
    bos: int
    eos: int
    start_of_turn: int
    end_of_turn: int

    @property
    def stop_ids(self) -> frozenset[int]:
        """Generation stops at either of these."""
        return frozenset({self.eos, self.end_of_turn})

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer) -> SpecialTokens:
        return cls(
            bos=tokenizer.piece_id("<bos>"),
            eos=tokenizer.piece_id("<eos>"),
            start_of_turn=tokenizer.piece_id("<start_of_turn>"),
            end_of_turn=tokenizer.piece_id("<end_of_turn>"),
        )


@dataclass(frozen=True, eq=False)
class Media:
    """One encoded image or audio clip: its soft embeddings and the ids of its block."""
    kind: str                 # "image" or "audio"
    embeds: np.ndarray        # [n, D] soft embeddings, one per soft token
    begin_id: int
    end_id: int
    soft_id: int
    key: str                  # digest of the source, so a cached prefix is reused only for the same media


@dataclass(frozen=True)
class Ids:
    """Token ids inserted as they are (a reply the model generated, kept exactly)."""
    ids: tuple[int, ...]


@dataclass
class PreparedPrompt:
    """Token ids, with the soft embeddings that replace the ids at media positions."""
    ids: list[int]
    media: list[tuple[int, Media]] = field(default_factory=list)   # (first position, block)

    def __len__(self) -> int:
        return len(self.ids)

    def keys(self) -> list:
        """Per position, what the KV cache entry depends on: the id, or the media content."""
        keys: list = list(self.ids)
        for start, m in self.media:
            keys[start:start + len(m.embeds)] = [(m.key, i) for i in range(len(m.embeds))]
        return keys

    def extend(self, other: "PreparedPrompt") -> "PreparedPrompt":
        n = len(self.ids)
        return PreparedPrompt(self.ids + other.ids, self.media + [(n + s, m) for s, m in other.media])


Segment = str | _Control | Ids | Media


def _content(content, where: str) -> list[Segment]:
    """A message's content as segments: trimmed text, media blocks, or ids."""
    if isinstance(content, str):
        return [content.strip()]
    if isinstance(content, Ids):
        return [content]
    if not isinstance(content, list):
        raise ValueError(f"{where}['content'] must be a string or a list of parts")
    out: list[Segment] = []
    for k, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            out.append(part["text"].strip())
        elif kind in ("image", "audio") and isinstance(part.get("media"), Media):
            m = part["media"]
            out += ["\n\n", Ids((m.begin_id,)), m, Ids((m.end_id,)), "\n\n"]
        else:
            raise ValueError(f"{where}['content'][{k}] must be {{'type': 'text', 'text': str}} or an image/audio "
                             f"part, got {part!r:.80}")
    return out


def _render(messages: list[dict], add_generation_prompt: bool) -> list[Segment]:
    """The template as a sequence of segments (no BOS)."""
    system, turns = _split_system(messages)
    offset = len(messages) - len(turns)  # 1 if there is a system message
    segments: list[Segment] = []
    for i, message in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise ValueError(
                f"messages[{i + offset}] has role {message['role']!r}, expected {expected!r}: "
                "roles must alternate user/assistant starting with user"
            )
        role = "model" if expected == "assistant" else "user"
        segments += [_Control.START_OF_TURN, f"{role}\n"]
        if i == 0 and system is not None:     # the template does not trim the system text
            segments.append(_system_text(system) + "\n\n")
        segments += _content(message["content"], f"messages[{i + offset}]")
        segments += [_Control.END_OF_TURN, "\n"]
    if add_generation_prompt:
        segments += [_Control.START_OF_TURN, "model\n"]
    return segments


def _system_text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and isinstance(content[0], dict) and isinstance(content[0].get("text"), str):
        return content[0]["text"]     # as the template does: the first part's text
    raise ValueError("messages[0]['content'] (system) must be a string or a list starting with a text part")


def _split_system(messages: list[dict]) -> tuple[str | list | None, list[dict]]:
    if not isinstance(messages, list):
        raise ValueError("messages must be a list of {'role': ..., 'content': ...} dicts")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not {"role", "content"} <= message.keys():
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content'")
        if message["role"] not in ("system", "user", "assistant"):
            raise ValueError(f"messages[{i}] has unknown role {message['role']!r} (system, user or assistant)")
        if message["role"] == "system" and i > 0:
            raise ValueError(f"messages[{i}] is a system message; only the first may be")
    if messages and messages[0]["role"] == "system":
        system, turns = messages[0]["content"], messages[1:]
    else:
        system, turns = None, messages
    if not turns:
        raise ValueError("messages must contain at least one user message")
    return system, turns


def _to_prompt(tokenizer: Tokenizer, special: SpecialTokens, segments: list[Segment], bos: bool) -> PreparedPrompt:
    control_ids = {_Control.BOS: special.bos, _Control.START_OF_TURN: special.start_of_turn,
                   _Control.END_OF_TURN: special.end_of_turn}
    prompt = PreparedPrompt([special.bos] if bos else [])
    text: list[str] = []
    for segment in [*segments, None]:
        if isinstance(segment, str):
            text.append(segment)
            continue
        if text:                      # text between two non-text segments is encoded as one
            prompt.ids += tokenizer.encode("".join(text))
            text = []
        if isinstance(segment, _Control):
            prompt.ids.append(control_ids[segment])
        elif isinstance(segment, Ids):
            prompt.ids += segment.ids
        elif isinstance(segment, Media):
            prompt.media.append((len(prompt.ids), segment))
            prompt.ids += [segment.soft_id] * len(segment.embeds)
    return prompt


def chat_prompt(tokenizer: Tokenizer, special: SpecialTokens, messages: list[dict],
                add_generation_prompt: bool = True, bos: bool = True) -> PreparedPrompt:
    """A conversation of {"role": "system"|"user"|"assistant", "content": str or parts}; media
    parts must already hold their encoded Media ({"type": "image", "media": Media})."""
    return _to_prompt(tokenizer, special, _render(messages, add_generation_prompt), bos)


def chat_ids(tokenizer: Tokenizer, special: SpecialTokens, messages: list[dict],
             add_generation_prompt: bool = True, bos: bool = True) -> list[int]:
    """Token ids of a conversation (soft-token placeholders at media positions)."""
    return chat_prompt(tokenizer, special, messages, add_generation_prompt, bos).ids


def chat_text(messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The same conversation as text with literal control tokens ("<bos>", ...); text only."""
    segments = [_Control.BOS, *_render(messages, add_generation_prompt)]
    if any(isinstance(s, (Ids, Media)) for s in segments):
        raise ValueError("chat_text renders text-only conversations")
    return "".join(s.value if isinstance(s, _Control) else s for s in segments)


def completion_ids(tokenizer: Tokenizer, special: SpecialTokens, text: str,
                   bos: bool = True) -> list[int]:
    """A plain (non-chat) prompt: [<bos>] + encode(text)."""
    return ([special.bos] if bos else []) + tokenizer.encode(text)
