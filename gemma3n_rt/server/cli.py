"""gemma3n-serve: start the HTTP server at once, load the model in the background (503 until then)."""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys

from ..cli import _budget, _int_at_least
from ..errors import Gemma3nError
from ..flags import FlagParser

log = logging.getLogger("gemma3n_rt.server")


def parser() -> argparse.ArgumentParser:
    p = FlagParser(prog="gemma3n-serve",
                                description="Serve a Gemma 3n bundle over an OpenAI-compatible HTTP API.")
    p.add_argument("--model", help="bundle directory (default: $GEMMA3N_MODEL, else the embedded demo)")
    choice = p.add_mutually_exclusive_group()
    choice.add_argument("--effective", help="MatFormer slice: 2b, 4b, a catalog name, or auto (default)")
    choice.add_argument("--memory-budget", type=_budget, help="serve the largest slice that fits, e.g. 1.5GB")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=8080, help="default 8080 (0: any free port)")
    p.add_argument("--context", type=_int_at_least(1), help="tokens (default: 4096, or the model's maximum if smaller)")
    p.add_argument("--threads", type=_int_at_least(1), help="CPU threads (default: one per core)")
    p.add_argument("--mlock", action="store_true", help="lock the weights a decode step reads in memory (see gemma3n-run)")
    p.add_argument("--api-key", default=os.environ.get("GEMMA3N_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 routes (default: $GEMMA3N_API_KEY, else none)")
    return p


def _port(text: str) -> int:
    port = _int_at_least(0)(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"must be at most 65535, got {port}")
    return port


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads so a taken port fails at once."""
    sock = None
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
        return sock
    except OSError as e:
        if sock is not None:
            sock.close()
        raise Gemma3nError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        import uvicorn
    except ImportError:
        print("gemma3n-serve: error: the server needs its extra: pip install 'gemma3n-rt[server]'", file=sys.stderr)
        return 2
    from ..model import load
    from .app import create_app
    from .bridge import Engine

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        sock = _listen(args.host, args.port)
    except Gemma3nError as e:
        print(f"gemma3n-serve: error: {e}", file=sys.stderr)
        return 2
    if not _is_loopback(args.host) and not args.api_key:
        log.warning("listening on %s without --api-key: anyone who can reach this address can use the model",
                    args.host)
    engine = Engine(lambda: load(args.model, args.effective, args.memory_budget, args.threads, args.context,
                             lock_weights=args.mlock))
    server = None

    def stop(error: BaseException) -> None:
        server.should_exit = True

    app = create_app(engine, args.api_key, on_load_failure=stop)
    server = uvicorn.Server(uvicorn.Config(app, access_log=False, log_level="info", timeout_graceful_shutdown=5))
    host, port = sock.getsockname()[:2]
    log.info("gemma3n-serve listening on http://%s:%d", f"[{host}]" if ":" in host else host, port)
    server.run(sockets=[sock])
    engine.loaded.wait(60)      # a model still loading is let finish: onnxruntime aborts on exit mid-load
    if engine.load_error is not None:
        e = engine.load_error
        reason = str(e) if isinstance(e, (Gemma3nError, ValueError, OSError)) else f"{type(e).__name__}: {e}"
        print(f"gemma3n-serve: error: {reason}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
