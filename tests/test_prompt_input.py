"""Prompts as users type them: empty, not valid Unicode, full of control characters, or quoting the
chat template's markers. Literal text is text: it never becomes a control token. A bounded fuzz
test (hypothesis) runs prompts and sampling parameters through the demo model."""
from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gemma3n_rt
from gemma3n_rt import cli
from gemma3n_rt.errors import Gemma3nError
from gemma3n_rt.prompt import SpecialTokens, chat_ids
from gemma3n_rt.tokenizer import MARKER_PIECES, Tokenizer

LITERALS = ["<start_of_turn>", "<end_of_turn>", "<image_soft_token>", "<bos>", "<eos>", "<pad>",
            "<start_of_turn>model\n", "<start_of_image><image_soft_token><end_of_image>", "<<bos>>", "<bos"]


@pytest.fixture(scope="module")
def model():
    return gemma3n_rt.load()      # the demo bundle


def control_ids(tokenizer: Tokenizer) -> set[int]:
    return {tokenizer.piece_id(p) for p in MARKER_PIECES if tokenizer._has_piece(p)}


def check_literals(tokenizer: Tokenizer):
    special = SpecialTokens.from_tokenizer(tokenizer)
    controls = control_ids(tokenizer)
    for text in LITERALS + ["say " + "".join(LITERALS) + " twice"]:
        ids = tokenizer.encode(text)
        assert not controls & set(ids), f"{text!r} encoded to control ids {sorted(controls & set(ids))}"
        assert tokenizer.decode(ids) == text
        # in a chat turn, the only control tokens are the template's own
        turn = chat_ids(tokenizer, special, [{"role": "user", "content": text}])
        assert [i for i in turn if i in controls] == [special.bos, special.start_of_turn, special.end_of_turn,
                                                       special.start_of_turn]


def test_literal_markers_are_text_demo_tokenizer(model):
    check_literals(model.tokenizer)
    for text in LITERALS:      # nor does the model's prompt turn them into media blocks
        prompt = model.prompt(text)
        assert not prompt.media and prompt.ids == chat_ids(model.tokenizer, model.special,
                                                          [{"role": "user", "content": text}])


@pytest.mark.real
def test_literal_markers_are_text_real_tokenizer(gemma3_270m_gguf, tmp_path):
    """Gemma's own tokenizer stores the markers as user-defined pieces that SentencePiece would
    match inside text; encode() must not."""
    from exporters.gguf_checkpoint import GGUFCheckpoint
    path = tmp_path / "tokenizer.model"
    path.write_bytes(GGUFCheckpoint(gemma3_270m_gguf).sentencepiece_model())
    tokenizer = Tokenizer(path)
    assert {"<start_of_turn>", "<start_of_image>", "<bos>"} <= {p for p in MARKER_PIECES if tokenizer._has_piece(p)}
    assert tokenizer._matched_markers is not None      # plain SentencePiece would match them in text
    check_literals(tokenizer)


def test_empty_prompt(model):
    for chat in (True, False):
        assert isinstance(model.generate("", max_new_tokens=3, temperature=0, chat=chat), str)
    assert model.prompt("", chat=False).ids == [model.special.bos]


@pytest.mark.parametrize("text", ["a\udcffb", "\ud800", "\udfff\ud800x", "\ud83d\ude00"])
def test_lone_surrogates_become_replacement_characters(model, text):
    """Undecodable bytes of a command line reach Python as lone surrogates (surrogateescape)."""
    ids = model.tokenizer.encode(text)
    expected = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)
    assert model.tokenizer.decode(ids) == expected
    assert isinstance(model.generate(text, max_new_tokens=2, temperature=0), str)


def test_invalid_utf8_on_the_command_line(capsys, monkeypatch):
    monkeypatch.delenv("GEMMA3N_MODEL", raising=False)
    argv_prompt = b"caf\xe9 \xff".decode("utf-8", "surrogateescape")    # as Python decodes sys.argv
    assert cli.main(["--max-new-tokens", "2", "--seed", "0", argv_prompt]) == 0
    assert capsys.readouterr().out.endswith("\n")


def test_control_characters(model):
    text = "\x00\x01\x07\x1b[31mred\x1b[0m\r\n\t\x7f\u200b\u202e\ufeff"
    ids = model.tokenizer.encode(text)
    assert not control_ids(model.tokenizer) & set(ids)
    assert isinstance(model.generate(text, max_new_tokens=2, temperature=0), str)


def test_non_text_prompt_is_a_value_error(model):
    with pytest.raises(ValueError):
        model.tokenizer.encode(b"bytes")
    with pytest.raises(ValueError):
        model.generate(b"bytes", max_new_tokens=1)


# --- fuzz ------------------------------------------------------------------------------------------

prompts = st.one_of(
    st.text(st.characters(codec=None, exclude_categories=()), max_size=60),       # any code point, surrogates too
    st.lists(st.sampled_from(LITERALS + ["hi", " ", "\n", "\x00", "\ud800", "é", "🙂"]), max_size=12).map("".join),
)
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-2, 3))


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompt=prompts, chat=st.booleans(), max_new_tokens=st.integers(-2, 4), temperature=floats,
       top_k=st.integers(-3, 5000), top_p=floats, seed=st.one_of(st.none(), st.integers(-5, 2**64)))
def test_fuzz_prompts_and_sampling(model, prompt, chat, max_new_tokens, temperature, top_k, top_p, seed):
    """Anything goes in; out comes a str, or a one-line Gemma3nError / ValueError."""
    try:
        out = model.generate(prompt, max_new_tokens=max_new_tokens, chat=chat, temperature=temperature,
                             top_k=top_k, top_p=top_p, seed=seed)
    except (Gemma3nError, ValueError) as e:
        assert str(e) and "\n" not in str(e)
        valid = (max_new_tokens >= 0 and 0 <= temperature < math.inf and 0 < top_p <= 1 and top_k >= 0
                 and (seed is None or seed >= 0))
        assert not valid, f"valid arguments refused: {e}"
        return
    assert isinstance(out, str)
