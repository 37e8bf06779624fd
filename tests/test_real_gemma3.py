"""Real weights: Google's Gemma 3 270M (pre-trained), imported from its GGUF file.

The tokenizer rebuilt from the GGUF metadata is the real 262,144-piece Gemma tokenizer; greedy
completions must be on-topic English; and the runtime's logits must match transformers'
Gemma3ForCausalLM loading the same GGUF (its own dequantization and name mapping) over a prompt
longer than the 512-token sliding window."""
import re

import numpy as np
import pytest

import gemma3n_rt
from exporters.export import export
from exporters.gguf_checkpoint import GGUFCheckpoint
from gemma3n_rt.tokenizer import Tokenizer

pytestmark = pytest.mark.real

MULTILINGUAL = [
    "The quick brown fox jumps over the lazy dog.",
    "Grüße aus München: Äpfel, Öl und Übermut kosten 12,50 €.",
    "日本語のテキストも正しく往復します。東京は晴れ。",
    "Съешь же ещё этих мягких французских булок.",
    "مرحبا بالعالم، كيف حالك اليوم؟",
    "Emoji 🚀🔥 and code: def f(x):\n    return x ** 2  # 3.14159",
    "  leading spaces, tabs\tand trailing spaces   ",
    "Runs of    spaces and\n\n\nnewlines, 1234567 digits.",
]

COMPLETIONS = {   # plain completion (a pre-trained model, no chat turns) -> a word it must use
    "The first man to walk on the moon was": "Armstrong",
    "The chemical symbol for gold is": "Au",
    "Paris is the capital of": "France",
    "The Eiffel Tower is located in": "Paris",
    "A week has seven days: Monday, Tuesday,": "Wednesday",
}


@pytest.fixture(scope="module")
def fp32_bundle(gemma3_270m_gguf, tmp_path_factory):
    out = tmp_path_factory.mktemp("g270m") / "fp32"
    export(gemma3_270m_gguf, str(out), quant="fp32", tables="fp32", show_progress=False)
    return out


def test_real_tokenizer_round_trips_multilingual_text(gemma3_270m_gguf):
    ckpt = GGUFCheckpoint(gemma3_270m_gguf)      # owns the rebuilt tokenizer file
    tok = Tokenizer(ckpt.tokenizer_path)
    assert tok.vocab_size == 262144
    assert [tok.piece_id(p) for p in ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>")] == [0, 1, 2, 105, 106]
    for text in MULTILINGUAL:
        assert tok.decode(tok.encode(text)) == text


def test_real_tokenizer_matches_transformers(gemma3_270m_gguf):
    from transformers import AutoTokenizer
    import os
    hf = AutoTokenizer.from_pretrained(os.path.dirname(gemma3_270m_gguf), gguf_file=os.path.basename(gemma3_270m_gguf))
    ckpt = GGUFCheckpoint(gemma3_270m_gguf)
    tok = Tokenizer(ckpt.tokenizer_path)
    for text in MULTILINGUAL:
        assert tok.encode(text) == hf(text, add_special_tokens=False).input_ids


def test_greedy_completions_are_on_topic_english(fp32_bundle):
    model = gemma3n_rt.load(str(fp32_bundle), context=256)
    for prompt, word in COMPLETIONS.items():
        text = model.generate(prompt, max_new_tokens=20, chat=False, temperature=0)
        print(f"{prompt!r} -> {text!r}")
        words = re.findall(r"\S+", text)
        assert word in text
        assert sum(bool(re.fullmatch(r"[A-Za-z][a-z]*[.,;:!?]?", w)) for w in words) >= 0.7 * len(words)


def test_logits_match_transformers_beyond_the_window(gemma3_270m_gguf, fp32_bundle):
    import os
    import torch
    from transformers import AutoModelForCausalLM
    ref = AutoModelForCausalLM.from_pretrained(os.path.dirname(gemma3_270m_gguf), dtype=torch.float32,
                                               gguf_file=os.path.basename(gemma3_270m_gguf)).eval()
    model = gemma3n_rt.load(str(fp32_bundle), context=1024)
    text = " ".join(MULTILINGUAL[:1] + [f"Line {i}: the fox counts to {i * 7}." for i in range(60)])
    ids = [model.special.bos] + model.tokenizer.encode(text)
    assert len(ids) > 600
    with torch.no_grad():
        theirs = ref(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].numpy()
    ours = model.next_token_logits(ids)
    err = np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))
    print(f"{len(ids)} tokens: max relative logit error {err:.2e}")
    assert err < 1e-3
    assert ours.argmax() == theirs.argmax()
