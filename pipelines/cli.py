"""`elm-corpus`: build, inspect and describe token corpora.

Each subcommand is a thin shim over the module that owns it; heavy imports stay lazy so
`elm-corpus --help` is instant.
"""
from __future__ import annotations

import argparse
import sys


def _build(args):
    from pipelines.build import cli_build
    return cli_build(args)


def _stats(args):
    from corpus.inspection.stats import cli_stats
    return cli_stats(args)


def _inspect(args):
    from corpus.inspection.stats import cli_inspect
    return cli_inspect(args)


def _sample(args):
    from corpus.mirror.mirror import cli_sample
    return cli_sample(args)


def _tokenizer_export(args):
    from corpus.manifest import load_manifest
    from corpus.tokenizer.tokenizer import Tokenizer
    spec = args.model
    if args.manifest:
        spec = load_manifest(args.manifest).tokenizer.model
    out = Tokenizer(spec).export(args.out)
    print(f"wrote {out}/tokenizer.model, tokenizer.json, tokenizer_config.json")
    return 0


def _validate(args):
    from corpus.manifest import load_manifest, format_token_count
    m = load_manifest(args.manifest)
    print(f"{args.manifest}: manifest '{m.name}' is valid: {len(m.sources)} sources, "
          f"{format_token_count(m.total_tokens)} tokens")
    for s, share in m.target_shares().items():
        print(f"  {s:<26} {share * 100:6.2f}%")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="elm-corpus", description="OpenELM pretraining corpora: build, stats, inspect.")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build or resume the corpus a manifest names")
    b.add_argument("manifest")
    b.add_argument("--sample", action="store_true", help="read the offline sample mirror instead of upstream")
    b.add_argument("--out", help="output folder (default data/corpora/<name>, or <name>-sample with --sample)")
    b.add_argument("--workers", type=int, default=None, help="parallel workers (default: CPUs)")
    b.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray)")
    b.add_argument("--force", action="store_true", help="rebuild into a fresh folder when the manifest changed")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(func=_build)

    s = sub.add_parser("stats", help="what a corpus holds, per source and per filter")
    s.add_argument("target", nargs="?", default=None, help="corpus name (under data/corpora) or folder")
    s.add_argument("--json", action="store_true", help="print the numbers as JSON (schema: docs/stats.md)")
    s.add_argument("--report", metavar="DIR", help="write an HTML report with PNG charts to DIR")
    s.add_argument("--data-dir", default=None, help="where corpora live (default data/corpora)")
    s.set_defaults(func=_stats)

    i = sub.add_parser("inspect", help="decode chunks back to text with their provenance")
    i.add_argument("target", nargs="?", default=None, help="corpus name or folder")
    i.add_argument("--source", default=None)
    i.add_argument("-n", type=int, default=3)
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--shard", default=None, help="one shard file (.bin/.idx/.json)")
    i.add_argument("--index", type=int, default=None, help="chunk index within --shard")
    i.add_argument("--data-dir", default=None)
    i.set_defaults(func=_inspect)

    m = sub.add_parser("sample", help="write the offline sample mirror of a manifest's sources")
    m.add_argument("manifest")
    m.add_argument("--out", default=None, help="folder (default data/sample)")
    m.set_defaults(func=_sample)

    v = sub.add_parser("validate", help="check a manifest and print its target mixture")
    v.add_argument("manifest")
    v.set_defaults(func=_validate)

    t = sub.add_parser("tokenizer", help="tokenizer tools")
    tsub = t.add_subparsers(dest="tokenizer_command", required=True)
    te = tsub.add_parser("export", help="write tokenizer.model, tokenizer.json, tokenizer_config.json")
    te.add_argument("out")
    te.add_argument("--model", default="default", help="SentencePiece .model path/URI (default: the bundled one)")
    te.add_argument("--manifest", default=None, help="take the tokenizer a manifest names")
    te.set_defaults(func=_tokenizer_export)
    return p


def main(argv: list[str] | None = None) -> int:
    from corpus.manifest import ManifestError
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ManifestError as e:
        print(str(e), file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:
        print(f"elm-corpus {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
