"""gemma3n-serve: a local OpenAI-compatible HTTP server over one loaded Model (the `server` extra).

Modules: schema (OpenAI request checks and response shapes), parts (message parts to the Model's
parts), bridge (the generation worker and its asyncio side), app (Starlette routes), cli.
"""
from .app import create_app
from .bridge import Engine

__all__ = ["create_app", "Engine"]
