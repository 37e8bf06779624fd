"""The one exception type users see: a clear, one-line message, never a traceback."""


class Gemma3nError(Exception):
    """Bad input (a file, a flag, a prompt) or a bundle that can't be used, said in one line."""
