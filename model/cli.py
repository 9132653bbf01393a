"""`elm-train`: train OpenELM on a built corpus, export runs, plot curves.

    elm-train --corpus NAME --model PRESET [--steps N] [--out DIR] [--resume]
    elm-train export RUN_DIR --format mlx|hf --out DIR
    elm-train plot RUN_DIR
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "export":
        from model.export import cli_export
        return int(cli_export(argv[1:]) or 0)
    if argv and argv[0] == "plot":
        from model.trainer import cli_plot
        return int(cli_plot(argv[1:]) or 0)
    if argv and argv[0] == "train":
        argv = argv[1:]
    from model.trainer import cli_train
    return int(cli_train(argv) or 0)


if __name__ == "__main__":
    sys.exit(main())
