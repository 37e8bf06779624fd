"""Command-line parsing for gemma3n-run and gemma3n-export: a bad flag is one line, `PROG: error:
--flag: problem`, and exit code 2, never argparse's usage block."""
from __future__ import annotations

import argparse
import re
import sys


class FlagParser(argparse.ArgumentParser):
    def error(self, message: str):
        # argparse says "argument --top-p: must be ..."; the flag itself is name enough
        message = re.sub(r"^argument ([^:]+): ", r"\1: ", message)
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse_args(self, args=None, namespace=None):
        return super().parse_args(self._attach_values(sys.argv[1:] if args is None else list(args)), namespace)

    def _attach_values(self, argv: list[str]) -> list[str]:
        """`--memory-budget -1GB` -> `--memory-budget=-1GB`: argparse takes a value that starts with
        '-' (and isn't a plain negative number) for an unknown option, so the flag would seem to have
        no value. Only values that are not themselves known flags are attached."""
        out, i = [], 0
        while i < len(argv):
            token = argv[i]
            if token == "--":
                return out + argv[i:]
            action = self._option_string_actions.get(token)
            takes_value = action is not None and action.nargs is None
            if takes_value and i + 1 < len(argv) and argv[i + 1].startswith("-") \
                    and argv[i + 1] not in self._option_string_actions and argv[i + 1] != "--" \
                    and not argv[i + 1].startswith(tuple(s + "=" for s in self._option_string_actions)):
                out.append(f"{token}={argv[i + 1]}")
                i += 2
                continue
            out.append(token)
            i += 1
        return out
