"""What both command lines (`elm-corpus`, `elm-train`) do with the terminal before any work."""
from __future__ import annotations

import sys
import warnings


def warnings_as_notes(prog: str) -> None:
    """Show each Python warning that reaches the terminal as one line, `PROG: note: MESSAGE`: the project's own
    (a partial corpus, a split without validation chunks) and the libraries' (PEFT's and transformers'
    deprecations), instead of a file path, a category and a source line. For the command-line entry points only:
    a library caller keeps Python's handling."""
    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        print(f"{prog}: note: {text}", file=file or sys.stderr)
    warnings.showwarning = show
