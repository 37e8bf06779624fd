"""gemma3n-export: convert a Gemma 3n (or Gemma 3) checkpoint or GGUF file into a gemma3n-rt bundle."""
from __future__ import annotations

import argparse
import errno
import os
import resource
import sys
import time

from gemma3n_rt.config import KV_CACHES
from gemma3n_rt.errors import Gemma3nError
from gemma3n_rt.flags import FlagParser
from .audio import QUANT_MODES as AUDIO_QUANT_MODES
from .calibrate import CALIBRATION_TEXT
from .export import QUANT_MODES, TABLE_DTYPES, export
from .quantize import DEFAULT_RECIPE
from .vision import DEFAULT_VISION_QUANT, VISION_QUANTS


def parser() -> argparse.ArgumentParser:
    p = FlagParser(prog="gemma3n-export", description=__doc__)
    p.add_argument("checkpoint", help="Hugging Face checkpoint directory (config.json, model*.safetensors, "
                                      "tokenizer.model), or a .gguf file; Gemma 3n or Gemma 3")
    p.add_argument("out", help="bundle directory to write")
    p.add_argument("--quant", choices=QUANT_MODES, default="int4", help="decoder weights (default int4, blockwise)")
    p.add_argument("--tables", choices=TABLE_DTYPES, default="int8", help="embedding row tables (default int8 per row)")
    p.add_argument("--block-size", type=int, choices=(16, 32, 64, 128, 256), default=DEFAULT_RECIPE.block_size,
                   help=f"block of the int4 linears, or of all with --quant int8 (default {DEFAULT_RECIPE.block_size})")
    p.add_argument("--head", choices=QUANT_MODES, default=None,
                   help=f"the tied LM head (default with int4: {DEFAULT_RECIPE.head or 'int4'}, its top logits "
                        f"recomputed, see --head-rescore; else as --quant)")
    p.add_argument("--head-block-size", type=int, choices=(16, 32, 64, 128, 256), default=None,
                   help=f"the LM head's block (default {DEFAULT_RECIPE.head_block_size} with an int4 head, else --block-size)")
    p.add_argument("--int8-block-size", type=int, choices=(16, 32, 64, 128, 256), default=None,
                   help=f"with int4: the block of the linears kept at int8 (default {DEFAULT_RECIPE.int8_block_size})")
    p.add_argument("--asymmetric", action=argparse.BooleanOptionalAction, default=DEFAULT_RECIPE.asymmetric,
                   help="int4/int8 with a zero point per block (MatMulNBits zero_points)")
    p.add_argument("--head-rescore", type=int, default=None, metavar="K",
                   help=f"with an int4 head: the runtime recomputes its K largest logits from the embedding row "
                        f"table (default {DEFAULT_RECIPE.head_rescore}; 0: off)")
    p.add_argument("--calibration", metavar="TEXT_FILE", default=CALIBRATION_TEXT,
                   help="text whose activations weigh each int4 block's grid (default: a built-in text of about "
                        "1,800 tokens; the decoder is exported once more at int8 to measure them)")
    p.add_argument("--no-calibration", dest="calibration", action="store_const", const=None,
                   help="int4 grids from each block's [min, max] alone (faster export, lower quality)")
    p.add_argument("--gptq", action=argparse.BooleanOptionalAction, default=DEFAULT_RECIPE.gptq,
                   help="with calibration: int4 values rounded column by column, each column's error carried "
                        "into the next ones as the calibration text's activations weigh them (GPTQ); "
                        "--no-gptq: rounded to nearest (faster export)")
    p.add_argument("--kv-cache", choices=KV_CACHES, default=None,
                   help="the KV caches' dtype (default fp16, half the memory of fp32; with --quant fp32, fp32)")
    p.add_argument("--prefill-int8", action="store_true",
                   help="int4/int8: prompts run the attention and FFN linears as int8 x int8 matmuls on int8 "
                        "copies of their weights (several times faster prefill where the CPU has int8 matrix "
                        "units; the bundle grows by about 1 byte per such parameter)")
    p.add_argument("--slices", help="MatFormer slices to include: 'all' (default: the full model and, for E4B, "
                                    "E2B and every published mix-n-match config) or a comma list of names")
    p.add_argument("--custom-slice", action="append", default=[], metavar="NAME=W,W,...[@SKIP]",
                   help="add a slice: FFN width per layer ('8192*20,16384*15' repeats), skipped layers ('20-24')")
    p.add_argument("--vision-quant", choices=VISION_QUANTS, default=DEFAULT_VISION_QUANT,
                   help=f"image encoder weights (default {DEFAULT_VISION_QUANT}; none: export without images)")
    p.add_argument("--audio-quant", choices=AUDIO_QUANT_MODES, default="int8",
                   help="audio encoder weights (default int8; none: export without audio)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle at OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    started = time.perf_counter()     # the whole export, reading the checkpoint included
    try:
        manifest = export(args.checkpoint, args.out, args.quant, args.tables, args.block_size, args.force,
                          show_progress=not args.quiet, slices=args.slices, custom=args.custom_slice,
                          vision_quant=args.vision_quant, audio_quant=args.audio_quant,
                          head=args.head, asymmetric=args.asymmetric, calibration=args.calibration,
                          head_rescore=args.head_rescore, prefill_int8=args.prefill_int8,
                          head_block_size=args.head_block_size, int8_block_size=args.int8_block_size,
                          gptq=args.gptq, kv_cache=args.kv_cache)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):     # export() has removed its partial output
            kept = "the bundle already there is unchanged" if os.path.exists(args.out) else "nothing was written"
            e = f"{args.out}: disk full ({e.strerror}); the partial export was removed and {kept}"
        print(f"gemma3n-export: error: {e}", file=sys.stderr)
        return 2
    except (Gemma3nError, ValueError) as e:
        print(f"gemma3n-export: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gemma3n-export: interrupted; nothing was written to OUT", file=sys.stderr)
        return 130
    size = sum(f["size"] for f in manifest["files"].values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    slices = ", ".join(s["name"] for s in manifest["slices"])
    print(f"wrote {args.out}: {size / 2**20:.1f} MiB, slices {slices}, decoder {args.quant}, tables {args.tables}, "
          f"{time.perf_counter() - started:.2f} s, peak RSS {peak:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
