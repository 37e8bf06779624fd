"""gemma3n-serve with images and audio: OpenAI image_url and input_audio parts reach the model as sent,
end to end on the demo's towers, and a bundle without encoders answers 400."""
import base64
import hashlib
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

import gemma3n_rt
from gemma3n_rt.media import MediaEncoders
from gemma3n_rt.model import demo_bundle_path
from gemma3n_rt.prompt import Media
from server_harness import CONTEXT, GREEDY, MESSAGES, _audio_part, _image_part, chat_text, png, serve, wav
from server_harness import reference, server  # noqa: F401  (pytest fixtures)


@pytest.fixture(scope="module")
def towerless_bundle(tmp_path_factory):
    """The demo without any image or audio encoder (as it is until towers are exported into it)."""
    src = demo_bundle_path()
    out = tmp_path_factory.mktemp("towerless") / "bundle"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("vision", "audio"))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.pop("vision", None)
    manifest.pop("audio", None)
    manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith(("vision/", "audio/"))}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return str(out)


def test_media_parts_to_a_bundle_without_encoders_get_400_naming_the_problem(towerless_bundle, tmp_path):
    (tmp_path / "cat.png").write_bytes(png(0))
    cases = [(_image_part("data:image/png;base64," + base64.b64encode(png(0)).decode()), "no image encoder"),
             (_image_part((tmp_path / "cat.png").as_uri()), "no image encoder"),
             (_audio_part(wav(0)), "no audio encoder")]
    with serve(lambda: gemma3n_rt.load(towerless_bundle, context=CONTEXT)) as plain:
        for message, words in cases:
            status, reply = plain.post("/v1/chat/completions", json.dumps({"messages": [message]}).encode())
            message = reply["error"]["message"]
            assert status == 400 and words in message and towerless_bundle in message
        assert chat_text(plain.client(), MESSAGES, max_tokens=2, **GREEDY)[2].completion_tokens == 2


class BytesMedia(MediaEncoders):
    """Stands in for the encoders on a bundle without towers: each image or sound becomes a block
    of soft embeddings drawn from a hash of its bytes, so the model sees exactly what was sent."""

    def __init__(self, model, tokens=5):
        super().__init__(model.bundle)
        self.width, self.tokens, self.seen = model.bundle.text.hidden_size, tokens, []
        self.text_vocab, self.piece = model.tokenizer.vocab_size, model.tokenizer.piece_id

    def _block(self, kind: str, source) -> Media:
        data = source if isinstance(source, bytes) else open(source, "rb").read()
        self.seen.append((kind, data))
        digest = hashlib.sha256(data).digest()
        embeds = np.random.default_rng(list(digest)).standard_normal((self.tokens, self.width)).astype(np.float32)
        soft = self.text_vocab + (kind == "audio")      # ids past the text pieces, not shown as text
        return Media(kind, embeds, self.piece(f"<start_of_{kind}>"), self.piece(f"<end_of_{kind}>"), soft,
                     digest.hex())

    def images(self, sources):
        return [self._block("image", s) for s in sources]

    def clips(self, source):
        return [self._block("audio", source)]


@pytest.fixture
def stub_media(server, reference):
    """BytesMedia in the served model and in the reference model, for the length of one test."""
    served, kept = server.engine.model, (server.engine.model.media, reference.media)
    served.media, reference.media = BytesMedia(served), BytesMedia(reference)
    yield served.media
    served.media, reference.media = kept


def test_image_and_audio_parts_reach_the_model_as_sent(server, reference, stub_media, tmp_path):
    """data: URLs, file:// paths and input_audio deliver the same bytes as Model.generate gets,
    and give the same text."""
    (tmp_path / "b.png").write_bytes(png(2))
    ask = lambda message: chat_text(server.client(), [message], max_tokens=8, **GREEDY)[0]
    model_text = lambda content: reference.generate([{"role": "user", "content": content}], max_new_tokens=8,
                                                    **GREEDY)
    a = ask(_image_part("data:image/png;base64," + base64.b64encode(png(1)).decode()))
    b = ask(_image_part((tmp_path / "b.png").as_uri()))
    c = ask(_audio_part(wav(3)))
    assert stub_media.seen == [("image", png(1)), ("image", png(2)), ("audio", wav(3))]
    assert a == model_text([{"type": "image", "image": png(1)}, {"type": "text", "text": "What is this?"}])
    assert b == model_text([{"type": "image", "image": str(tmp_path / "b.png")},
                            {"type": "text", "text": "What is this?"}])
    assert c == model_text([{"type": "audio", "audio": wav(3)}, {"type": "text", "text": "Transcribe."}])
    assert len({a, b}) == 2      # the picture changes the answer




def test_image_end_to_end_equals_model_generate(server, reference):
    content = [{"type": "text", "text": "What is this?"}]
    text = chat_text(server.client(), [_image_part("data:image/png;base64," + base64.b64encode(png(4)).decode())],
                     max_tokens=6, **GREEDY)[0]
    assert text == reference.generate([{"role": "user", "content": [{"type": "image", "image": png(4)}] + content}],
                                      max_new_tokens=6, **GREEDY)


def test_audio_end_to_end_equals_model_generate(server, reference):
    text = chat_text(server.client(), [_audio_part(wav(5))], max_tokens=6, **GREEDY)[0]
    content = [{"type": "audio", "audio": wav(5)}, {"type": "text", "text": "Transcribe."}]
    assert text == reference.generate([{"role": "user", "content": content}], max_new_tokens=6, **GREEDY)
