"""Gemma 3 / 3n chat template, rendered to token ids with control tokens inserted as ids.

A conversation renders as (HF's Gemma 3 template; a system message is prepended to the
first user turn):

    <bos><start_of_turn>user\n{system}\n\n{user}<end_of_turn>\n
    <start_of_turn>model\n{reply}<end_of_turn>\n
    <start_of_turn>model\n                        <- generation prompt

Text between two control tokens is encoded as one segment.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

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


def _render(messages: list[dict], add_generation_prompt: bool) -> list[str | _Control]:
    """The template as a sequence of text segments and control tokens (no BOS)."""
    system, turns = _split_system(messages)
    offset = len(messages) - len(turns)  # 1 if there is a system message
    segments: list[str | _Control] = []
    for i, message in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise ValueError(
                f"messages[{i + offset}] has role {message['role']!r}, expected {expected!r}: "
                "roles must alternate user/assistant starting with user"
            )
        prefix = system + "\n\n" if i == 0 and system is not None else ""
        role = "model" if expected == "assistant" else "user"
        segments += [_Control.START_OF_TURN, f"{role}\n{prefix}{message['content'].strip()}",
                     _Control.END_OF_TURN, "\n"]
    if add_generation_prompt:
        segments += [_Control.START_OF_TURN, "model\n"]
    return segments


def _split_system(messages: list[dict]) -> tuple[str | None, list[dict]]:
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not {"role", "content"} <= message.keys():
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content'")
        if not isinstance(message["content"], str):
            raise ValueError(f"messages[{i}]['content'] must be a string")
        if message["role"] == "system" and i > 0:
            raise ValueError(f"messages[{i}] is a system message; only the first may be")
    if messages and messages[0]["role"] == "system":
        system, turns = messages[0]["content"], messages[1:]
    else:
        system, turns = None, messages
    if not turns:
        raise ValueError("messages must contain at least one user message")
    return system, turns


def chat_ids(tokenizer: Tokenizer, special: SpecialTokens, messages: list[dict],
             add_generation_prompt: bool = True, bos: bool = True) -> list[int]:
    """Token ids of a conversation of {"role": "system"|"user"|"assistant", "content": str}."""
    control_ids = {
        _Control.BOS: special.bos,
        _Control.START_OF_TURN: special.start_of_turn,
        _Control.END_OF_TURN: special.end_of_turn,
    }
    ids = [special.bos] if bos else []
    for segment in _render(messages, add_generation_prompt):
        if isinstance(segment, _Control):
            ids.append(control_ids[segment])
        else:
            ids += tokenizer.encode(segment)
    return ids


def chat_text(messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The same conversation as text with literal control tokens ("<bos>", ...)."""
    segments = [_Control.BOS, *_render(messages, add_generation_prompt)]
    return "".join(s.value if isinstance(s, _Control) else s for s in segments)


def next_turn_ids(tokenizer: Tokenizer, special: SpecialTokens, user_content: str,
                  first_turn: bool, system: str | None = None) -> list[int]:
    """Ids to append to a KV-cached conversation for a new user turn plus the generation
    prompt.

    first_turn=True gives chat_ids() of [system?, user]. Otherwise the history must end
    with the model's reply ids followed by <end_of_turn> (append it if generation stopped
    for another reason); the ids returned start with the "\\n" that closes that turn. The
    history then renders as chat_text() of the whole conversation whose assistant contents
    are the generated reply texts (chat_text strips contents, so a reply ending in
    whitespace renders with that whitespace only in the history).
    """
    user = [{"role": "user", "content": user_content}]
    if first_turn:
        head = [{"role": "system", "content": system}] if system is not None else []
        return chat_ids(tokenizer, special, head + user)
    if system is not None:
        raise ValueError("system is only allowed on the first turn (first_turn=True)")
    return tokenizer.encode("\n") + chat_ids(tokenizer, special, user, bos=False)


def completion_ids(tokenizer: Tokenizer, special: SpecialTokens, text: str,
                   bos: bool = True) -> list[int]:
    """A plain (non-chat) prompt: [<bos>] + encode(text)."""
    return ([special.bos] if bos else []) + tokenizer.encode(text)
