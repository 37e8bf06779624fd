import io

import pytest
import sentencepiece as spm

from gemma3n_rt.tokenizer import StreamDecoder, Tokenizer

CONTROL_PIECES = ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                  "<start_of_audio>", "<end_of_audio>", "<bos>", "<eos>", "<pad>"]

TEXTS = [
    "Hello, world! How are you today?",
    "Grüße aus München: Äpfel, Öl und Übermut.",
    "日本語のテキストです。東京へようこそ",
    "emoji 🙂👍🏽 and flags 🇩🇪 mixed in",
    "12345 and 3.14159",
    "   leading spaces",
    "trailing spaces   ",
    "multiple   inner    spaces",
    "line one\nline two\n\n\tindented\n",
    "\n",
    " ",
    "mixed: Grüße 🙂 日本 42\n  end",
]


def test_demo_model_layout(tokenizer):
    assert tokenizer.vocab_size == 2048
    assert (tokenizer.pad_id, tokenizer.eos_id, tokenizer.bos_id) == (0, 1, 2)
    assert [tokenizer.id_to_piece(i) for i in range(4)] == ["<pad>", "<eos>", "<bos>", "<unk>"]
    assert tokenizer.piece_id("<start_of_turn>") == 4
    assert tokenizer.piece_id("<end_of_turn>") == 5


def test_training_is_deterministic(make_tokenizer, demo_tokenizer_path, tmp_path):
    again = make_tokenizer.train_demo_tokenizer(tmp_path / "again.model")
    assert again == tmp_path / "again.model"
    assert again.read_bytes() == demo_tokenizer_path.read_bytes()


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.bos_id not in ids
    assert tokenizer.decode(ids) == text


def test_digits_are_split(tokenizer):
    ids = tokenizer.encode("12345")
    assert [tokenizer.id_to_piece(i) for i in ids] == list("12345")


def test_encode_empty_and_no_bos(tokenizer):
    assert tokenizer.encode("") == []
    assert tokenizer.encode("Hello")[0] != tokenizer.bos_id


@pytest.mark.parametrize("piece", CONTROL_PIECES)
def test_control_text_is_not_a_control_id(tokenizer, piece):
    control_ids = {tokenizer.piece_id(p) for p in CONTROL_PIECES}
    ids = tokenizer.encode(f"say {piece} now")
    assert not control_ids & set(ids)
    assert tokenizer.decode(ids) == f"say {piece} now"


def test_decode_drops_control_ids(tokenizer):
    sot, eot = tokenizer.piece_id("<start_of_turn>"), tokenizer.piece_id("<end_of_turn>")
    ids = [tokenizer.bos_id, sot, *tokenizer.encode("Hi there"), eot, tokenizer.eos_id]
    assert tokenizer.decode(ids) == "Hi there"


def test_piece_lookup_errors(tokenizer):
    with pytest.raises(ValueError, match="<no_such_piece>"):
        tokenizer.piece_id("<no_such_piece>")
    with pytest.raises(ValueError, match="4096"):
        tokenizer.id_to_piece(4096)


def test_bad_model_files(tmp_path):
    missing = tmp_path / "missing.model"
    with pytest.raises(FileNotFoundError, match="missing.model"):
        Tokenizer(missing)
    junk = tmp_path / "junk.model"
    junk.write_text("not a model")
    with pytest.raises(ValueError, match="junk.model"):
        Tokenizer(junk)


def stream(tokenizer, ids):
    decoder = StreamDecoder(tokenizer)
    deltas = [decoder.push(i) for i in ids]
    return deltas, decoder.flush()


@pytest.mark.parametrize("text", TEXTS)
def test_stream_matches_decode(tokenizer, text):
    ids = tokenizer.encode(text)
    deltas, tail = stream(tokenizer, ids)
    assert "".join(deltas) + tail == tokenizer.decode(ids) == text
    assert tail == ""  # every character completes by the last token
    assert not any("\ufffd" in d for d in deltas)


def test_stream_holds_partial_utf8(tokenizer):
    ids = tokenizer.encode("🙂")
    assert len(ids) == 4  # byte fallback: one token per UTF-8 byte
    deltas, tail = stream(tokenizer, ids)
    assert deltas == ["", "", "", "🙂"] and tail == ""


def test_stream_with_control_ids_and_broken_bytes(tokenizer):
    eot = tokenizer.piece_id("<end_of_turn>")
    lone_byte = tokenizer.piece_id("<0xE6>")  # a 3-byte lead with no continuation
    for ids in ([eot, *tokenizer.encode("a b"), eot, *tokenizer.encode(" c")],
                [lone_byte, *tokenizer.encode("a")],
                [*tokenizer.encode("x"), lone_byte]):
        deltas, tail = stream(tokenizer, ids)
        assert "".join(deltas) + tail == tokenizer.decode(ids)


def test_stream_decodes_a_bounded_window(tokenizer):
    class Recording:
        def __init__(self):
            self.longest = 0

        def decode(self, ids):
            self.longest = max(self.longest, len(ids))
            return tokenizer.decode(ids)

    recording = Recording()
    ids = tokenizer.encode(" ".join(TEXTS) * 20)
    decoder = StreamDecoder(recording)
    text = "".join(decoder.push(i) for i in ids) + decoder.flush()
    assert text == tokenizer.decode(ids)
    assert len(ids) > 1000 and recording.longest <= 10


@pytest.fixture(scope="module")
def gemma_like_tokenizer(tmp_path_factory):
    """A tiny model storing the markers as USER_DEFINED pieces, as Gemma's model does."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["hello world", "the model said hi", "user turn"] * 10),
        model_writer=model, model_type="bpe", vocab_size=300, hard_vocab_limit=False,
        byte_fallback=True, add_dummy_prefix=False, remove_extra_whitespaces=False,
        normalization_rule_name="identity", pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>"], num_threads=1, minloglevel=2,
    )
    path = tmp_path_factory.mktemp("gemma_like") / "tokenizer.model"
    path.write_bytes(model.getvalue())
    return path


def test_user_defined_markers_are_treated_as_control(gemma_like_tokenizer):
    raw = spm.SentencePieceProcessor(model_file=str(gemma_like_tokenizer))
    sot = raw.piece_to_id("<start_of_turn>")
    assert sot in raw.encode("x<start_of_turn>y")  # what plain SentencePiece would do

    tok = Tokenizer(gemma_like_tokenizer)
    text = "<start_of_turn>user hi<end_of_turn><<end_of_turn>>"
    ids = tok.encode(text)
    assert not {sot, tok.piece_id("<end_of_turn>")} & set(ids)
    assert tok.decode(ids) == text
    assert tok.decode([sot, *tok.encode("hi"), tok.piece_id("<end_of_turn>")]) == "hi"
