"""gemma3n-run: generate from the shell, one prompt or an interactive chat."""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys

from .errors import Gemma3nError
from .flags import FlagParser
from .memory import parse_bytes
from .decoder import DEFAULT_CHUNK
from .model import DEFAULT_CONTEXT, load
from .planner import MiB, choose_slice, encoder_bytes, ledger
from .sessions import maps_prepacked


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def _float(ok, what: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not ok(value):     # nan fails every comparison
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    return parse


def _threads(text: str) -> int:
    value = _int_at_least(1)(text)
    # more threads than this only oversubscribes the cores; a typo such as 999 should not pass
    limit = min(256, 4 * (os.cpu_count() or 64))
    if value > limit:
        raise argparse.ArgumentTypeError(f"must be at most {limit} (4 per CPU core, 256 at most), got {value}")
    return value


def _effective(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a slice: 2b, 4b, a catalog name, or auto")
    return text.strip()


def _budget(text: str) -> str:
    try:
        parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def parser() -> argparse.ArgumentParser:
    p = FlagParser(prog="gemma3n-run", description="Run a Gemma 3n bundle on the CPU.")
    p.add_argument("prompt", nargs="?", help="the prompt (a user turn of the chat template, or plain text with --raw)")
    p.add_argument("--model", help="bundle directory (default: $GEMMA3N_MODEL, else the embedded demo)")
    p.add_argument("--effective", type=_effective, help="MatFormer slice: 2b, 4b, a catalog name, or auto (default)")
    p.add_argument("--memory-budget", type=_budget, help="pick the largest slice that fits, e.g. 1.5GB")
    p.add_argument("--plan", action="store_true", help="print each slice's memory ledger and the choice, then exit")
    p.add_argument("--max-new-tokens", type=_int_at_least(0), default=256,
                   help="stop after this many new tokens, if no end-of-turn comes first (default 256)")
    p.add_argument("--temperature", type=_float(lambda v: 0 <= v < math.inf, "a number >= 0"), default=1.0,
                   help="0 = greedy (default 1.0)")
    p.add_argument("--top-k", type=_int_at_least(0), default=64, help="0 = off (default 64)")
    p.add_argument("--top-p", type=_float(lambda v: 0 < v <= 1, "in (0, 1]"), default=0.95, help="default 0.95")
    p.add_argument("--seed", type=_int_at_least(0), help="make sampling reproducible")
    p.add_argument("--context", type=_int_at_least(1),
                   help=f"tokens (default: {DEFAULT_CONTEXT}, or the model's maximum if smaller)")
    p.add_argument("--threads", type=_threads, help="CPU threads (default: one per core)")
    p.add_argument("--mlock", action="store_true",
                   help="lock the weights a decode step reads in memory, so a memory limit near the model's size "
                        "doesn't slow decode (refused where they don't fit)")
    p.add_argument("--raw", action="store_true", help="plain completion of the prompt, no chat template")
    p.add_argument("--interactive", "-i", action="store_true", help="chat in a loop (empty line or Ctrl-D ends)")
    p.add_argument("--stats", action="store_true", help="print speed and memory figures to stderr")
    p.add_argument("--image", action="append", default=[], metavar="PATH", help="an image for the prompt (repeatable)")
    p.add_argument("--audio", action="append", default=[], metavar="PATH", help="a sound file for the prompt (repeatable)")
    p.add_argument("--windowing", action="store_true",
                   help="encode large or far-from-square images as the whole image plus crops")
    p.add_argument("--max-crops", type=_int_at_least(1), default=4, help="crops per image with --windowing (default 4)")
    p.add_argument("--max-clips", type=_int_at_least(1), default=8,
                   help="30-second clips per sound file; longer audio is an error (default 8)")
    p.add_argument("--verify", action="store_true", help="check every bundle file's sha256, then exit")
    return p


def print_plan(args) -> None:
    from .bundle import Bundle
    from .model import default_bundle_path
    bundle = Bundle.open(default_bundle_path(args.model))
    context = args.context or min(DEFAULT_CONTEXT, bundle.text.max_position_embeddings)
    chosen = choose_slice(bundle, args.effective, args.memory_budget, context, DEFAULT_CHUNK, modalities(args))
    quant = bundle.quant.decoder
    print(f"{'slice':<16}{'effective':>11}{'MMLU':>7}{'weights':>10}{'KV':>9}{'workspace':>11}{'total':>10}"
          f"   MiB at context {context}")
    for s in sorted(bundle.slices, key=lambda s: s.effective_params):
        l = ledger(bundle.text, s, context, DEFAULT_CHUNK, quant, kv_cache=bundle.quant.kv_cache)
        mmlu = f"{s.published_mmlu:.1f}" if s.published_mmlu is not None else "-"
        mark = "  <- chosen" if s == chosen else ""
        print(f"{s.name:<16}{s.effective_params / 1e9:>10.2f}B{mmlu:>7}{l.weights / MiB:>10.0f}{l.kv / MiB:>9.0f}"
              f"{l.workspace / MiB:>11.0f}{l.total / MiB:>10.0f}{mark}")
    if any(maps_prepacked(bundle.file(s.graph)) for s in bundle.slices):
        print("weights: mapped from their prepacked copy (page cache the kernel can reclaim), not anonymous memory")
    for kind, tower in (("image", bundle.vision), ("audio", bundle.audio)):
        if tower is not None:
            used = "" if kind in modalities(args) else "  (not needed for this request)"
            print(f"{kind + ' encoder':<16}{tower.params / 1e9:>10.2f}B{'':>7}{encoder_bytes(bundle, (kind,)) / MiB:>10.0f}"
                  f"{'':>9}{'':>11}{'':>10}{used}")


def modalities(args) -> tuple[str, ...]:
    """The encoders this request needs (the memory plan reserves room for them)."""
    return tuple(m for m, given in (("image", args.image), ("audio", args.audio)) if given)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    try:
        if args.plan:
            print_plan(args)
            return 0
        if args.verify:
            from .bundle import verify
            path = verify(args.model)
            print(f"{path}: every file matches its sha256")
            return 0
        if not args.prompt and not args.interactive:
            raise Gemma3nError("give a PROMPT, or --interactive to chat")
        from .sampling import SamplingParams
        SamplingParams(**sampling)   # bad sampling flags fail before the model loads
        with notes_to_stderr():
            model = load(args.model, args.effective, args.memory_budget, args.threads, args.context,
                         modalities=modalities(args), windowing=args.windowing, max_crops=args.max_crops,
                         max_clips=args.max_clips, lock_weights=args.mlock)
        if args.interactive:
            return chat_loop(model, args, sampling)
        show(model.stream(args.prompt, args.max_new_tokens, chat=not args.raw, images=args.image, audio=args.audio,
                          **sampling), model, args.stats)
        return 0
    except (Gemma3nError, ValueError, OSError) as e:
        print(f"gemma3n-run: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


@contextlib.contextmanager
def notes_to_stderr():
    """The runtime's one-off notes on stderr while the command runs: a decoder's first load writes
    its prepacked weights (sessions.py), which takes a while and about twice its weights on disk."""
    runtime = logging.getLogger("gemma3n_rt")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("gemma3n-run: %(message)s"))
    level = runtime.level
    runtime.addHandler(handler)
    runtime.setLevel(logging.INFO)
    try:
        yield
    finally:
        runtime.removeHandler(handler)
        runtime.setLevel(level)


def chat_loop(model, args, sampling) -> int:
    chat = model.chat()

    def turn(text: str, images=(), audio=()) -> None:
        dropped = chat.dropped_turns
        pieces = chat.send(text, args.max_new_tokens, images=images, audio=audio, **sampling)
        if chat.dropped_turns > dropped:
            print(f"[context of {model.context} tokens full: dropped the oldest {chat.dropped_turns - dropped} "
                  f"turn(s)]", file=sys.stderr)
        show(pieces, model, args.stats)

    if args.prompt:
        turn(args.prompt, args.image, args.audio)
    elif args.image or args.audio:
        raise Gemma3nError("--image/--audio in a chat go with the first PROMPT")
    while True:
        try:
            text = input("> ")
        except EOFError:
            print()
            return 0
        if not text.strip():
            return 0
        try:
            turn(text)
        except KeyboardInterrupt:     # stop this reply, keep chatting
            print("\n[interrupted]")
        except Gemma3nError as e:     # e.g. a turn longer than the whole context: say so, keep chatting
            print(f"gemma3n-run: error: {e}", file=sys.stderr)


def show(pieces, model, stats: bool) -> None:
    """Stream text to stdout as it comes; speed and memory figures to stderr."""
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    if stats:
        encoded = f"encoding images/audio {model.media.seconds:.2f} s | " if model.media.seconds else ""
        locked = f", {model.decoder.locked_bytes / 2**30:.2f} GiB locked" if model.decoder.locked_bytes else ""
        print(f"[{model.slice}, context {model.context}{locked}] {encoded}{model.last_stats.summary()}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
