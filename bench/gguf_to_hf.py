"""Write the weights of a Gemma 3 GGUF as a float32 Hugging Face checkpoint, for converters that
only read those (LiteRT-LM's, README: Benchmarks). transformers reads a GGUF but refuses to save a
model loaded from one, so the weights are copied into a fresh model first. Needs torch,
transformers, accelerate and gguf; bench-only (the runtime never imports torch).

    python -m bench.gguf_to_hf FILE.gguf OUT_DIR
"""
from __future__ import annotations

import os
import sys


def main(argv=None) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3ForCausalLM
    gguf, out = (argv or sys.argv[1:])[:2]
    folder, name = os.path.split(os.path.abspath(gguf))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config
    model = Gemma3ForCausalLM(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
