"""`elm-corpus`: build, inspect and describe token corpora, and measure what they hold of evaluation tasks.

This module parses the command line and prints; the work is done by the domain modules
(`pipelines.build`, `pipelines.contamination`, `corpus.inspection`, `corpus.store.verify`, `corpus.mirror`,
`corpus.heldout`, `corpus.tokenizer`), whose heavy imports stay lazy so `elm-corpus --help` is instant. Terminal tables:
`pipelines.views`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _build(args) -> int:
    from corpus.inspection.health import corpus_warnings
    from corpus.store.layout import CorpusWriteError
    from pipelines.build import BuildRefused, build
    from pipelines.dedup import DedupFailed
    command = f"elm-corpus {args.command}"
    try:
        result = build(args.manifest, out_dir=args.out, sample=args.sample, workers=args.workers,
                       address=args.address, force=args.force, progress=not args.no_progress,
                       dedup_only=args.command == "dedup", reuse=getattr(args, "reuse", None) or [])
    except BuildRefused as e:
        print(f"{command}: refused: {e}", file=sys.stderr)
        return 3
    except CorpusWriteError as e:
        print(f"{command}: stopped: {e}", file=sys.stderr)
        return 4
    except DedupFailed as e:
        print(f"{command}: stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{command}: interrupted; finished units are kept, run the same command to resume", file=sys.stderr)
        return 130
    if result.moved_aside:
        print(f"moved the old build aside to {result.moved_aside}")
    if args.command == "dedup":
        from corpus.store.layout import CorpusDir
        from pipelines.dedup import dedup_done
        removed = dedup_done(CorpusDir(result.out_dir))["removed"]
        print(f"{result.out_dir}: deduplicated {result.units_total} units in {result.seconds:.1f}s; removes "
              f"{removed.get('duplicate_exact', 0):,} exact and {removed.get('duplicate_near', 0):,} near duplicates; "
              f"'elm-corpus build' of this folder and 'elm-train --stream' of the manifest leave them out")
        return 0
    for r in result.reused:
        if r.skipped:
            print(f"elm-corpus build: --reuse {r.donor}: no unit taken: {r.skipped}", file=sys.stderr)
    reused = f", {result.units_reused} reused" if result.reused else ""
    totals = result.corpus["totals"]
    print(f"{result.out_dir}: {result.status}; units {result.units_total} "
          f"({result.units_skipped} already done{reused}, {result.units_run} run) in {result.seconds:.1f}s; "
          f"documents {totals['documents_read']:,} read, {totals['kept']:,} kept, "
          f"{sum(totals['dropped'].values()):,} dropped, {totals['quarantined']:,} quarantined; "
          f"{totals['tokens']:,} tokens")
    for name, warning in corpus_warnings(result.corpus).items():
        print(f"elm-corpus build: warning: source {name} {warning}", file=sys.stderr)
    if result.failed:
        print(f"{len(result.failed)} unit(s) failed; rerun the same command to retry them:", file=sys.stderr)
        for f in result.failed:
            print(f"  {f['source']}/{f['unit']}: {f['error']}", file=sys.stderr)
        return 1
    return 0


def _stats(args) -> int:
    from corpus.inspection.stats import SCHEMA_VERSION, collect, summary_row
    from corpus.store.layout import corpora_dir, find_corpus, list_corpora
    from pipelines import views
    if args.target is None:
        if args.report:
            raise ValueError("--report needs a corpus: elm-corpus stats NAME_OR_DIR --report DIR")
        rows = [summary_row(p) for p in list_corpora(args.data_dir)]
        if args.json:
            print(json.dumps({"schema_version": SCHEMA_VERSION, "corpora_dir": str(corpora_dir(args.data_dir)),
                              "corpora": rows}, indent=2))
        else:
            views.print_corpora(rows, corpora_dir(args.data_dir))
        return 0
    stats = collect(find_corpus(args.target, args.data_dir))
    if args.json:
        print(json.dumps(stats.numbers, indent=2))
    else:
        views.print_corpus(stats.numbers)
    if args.report:
        from corpus.inspection.report import write_report
        page = write_report(stats, args.report)
        print(f"report: {page}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _verify(args) -> int:
    from corpus.store.layout import CorpusBusy, find_corpus
    from corpus.store.verify import verify
    from pipelines import views
    folder = find_corpus(args.target, args.data_dir)
    progress = views.VerifyProgress(enabled=not args.json and sys.stderr.isatty())
    try:
        result = verify(folder, repair=args.repair, progress=progress.update)
    except CorpusBusy as e:
        print(f"elm-corpus verify: refused: {e}", file=sys.stderr)
        return 3
    finally:
        progress.close()
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        views.print_verification(result, args.target, repaired=args.repair)
    return 0 if result.ok else 1


def _inspect(args) -> int:
    from corpus.inspection.chunks import chunk_at, draw_chunks
    from corpus.store.layout import find_corpus
    from pipelines import views
    if args.shard is not None:
        if args.index is None:
            raise ValueError("--shard needs --index I (the chunk number within that shard)")
        views.print_chunks([chunk_at(args.shard, args.index)], full=True)
        return 0
    if args.index is not None:
        raise ValueError("--index needs --shard FILE")
    if args.target is None:
        raise ValueError("inspect needs a corpus: elm-corpus inspect NAME [--source S] [-n K] [--seed N]")
    chunks = draw_chunks(find_corpus(args.target, args.data_dir), source=args.source, n=args.n, seed=args.seed)
    views.print_chunks(chunks, full=False)
    return 0


def _contamination(args) -> int:
    from pipelines import views
    from pipelines.contamination import measure
    found = measure(args.target, args.tasks, include_path=args.include_path, ngram=args.ngram, workers=args.workers,
                    address=args.address, data_dir=args.data_dir)
    if args.json:
        print(json.dumps(found.report, indent=2))
    else:
        views.print_contamination(found.report)
    print(f"report: {found.path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _sample(args) -> int:
    """Write the offline sample mirror and say what it holds."""
    from corpus.manifest import load_manifest
    from corpus.mirror.mirror import ensure_mirror, read_index
    manifest = load_manifest(args.manifest)
    root = ensure_mirror(manifest, args.out)
    sources = read_index(root)["sources"]
    print(f"sample mirror of '{manifest.name}' in {root}")
    print(f"  {'source':<26} {'format':<9} {'files':>5} {'documents':>9} {'bad':>4} {'bytes':>11}")
    total = 0
    for s in manifest.sources:
        e = sources[s.name]
        total += e["bytes"]
        print(f"  {s.name:<26} {e['format']:<9} {len(e['files']):>5} {e['documents']:>9} "
              f"{len(e['bad_records']):>4} {e['bytes']:>11,}")
    print(f"  {'total':<26} {'':<9} {'':>5} {'':>9} {'':>4} {total:>11,}")
    return 0


def _tasks_cloze(args) -> int:
    """Write the cloze tasks of text held out of a manifest's --sample build, and say what they hold."""
    from corpus.heldout.cloze import cloze_tasks, parse_kinds
    from corpus.heldout.task_folder import write_tasks
    from corpus.manifest import load_manifest
    kinds = parse_kinds(args.kinds)
    if args.items < 1:
        raise ValueError(f"--items must be at least 1, got {args.items}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"{args.out} is a file; OUT_DIR must be a folder (it is created if missing)")
    manifest = load_manifest(args.manifest)
    tasks = cloze_tasks(manifest, kinds, args.items, args.seed)  # all of it before anything is written
    written = write_tasks(tasks, args.out)
    for task, (config, data) in zip(tasks, written):
        print(f"wrote {config} and {data.name}: {len(task.items)} {task.kind.name} items from {task.held_out} of "
              f"{task.pool} {task.kind.what}, those held out of the --sample build of '{manifest.name}'")
    print(f"evaluate: elm-train eval MODEL --tasks {','.join(t.name for t in tasks)} "
          f"--include-path {written[0][0].parent}")
    return 0


def _tokenizer_export(args) -> int:
    from corpus.manifest import load_manifest
    from corpus.tokenizer.tokenizer import Tokenizer
    spec = args.model
    if args.manifest:
        spec = load_manifest(args.manifest).tokenizer.model
    present = sorted(p.name for p in Path(args.out).glob("tokenizer*")) if Path(args.out).is_dir() else []
    if present and not args.force:
        print(f"elm-corpus tokenizer export: {args.out} already holds {', '.join(present)}; pass --force to "
              f"replace the tokenizer files (nothing else in the folder is touched)", file=sys.stderr)
        return 2
    out = Tokenizer(spec).export(args.out)
    print(f"wrote {out}/tokenizer.model, tokenizer.json, tokenizer_config.json")
    return 0


def _validate(args) -> int:
    from corpus.inspection.numbers import short_count
    from corpus.inspection.stats import dedup_settings
    from corpus.manifest import load_manifest
    m = load_manifest(args.manifest)
    print(f"{args.manifest}: manifest '{m.name}' is valid: {len(m.sources)} sources, "
          f"{short_count(m.total_tokens, digits=4)} tokens")
    for s, share in m.target_shares().items():
        print(f"  {s:<26} {share * 100:6.2f}%")
    if m.dedup is not None:  # what the build will remove besides CoreNet's rules
        print(f"  {dedup_settings(m.dedup.model_dump(mode='json'))}")
    if m.decontaminate is not None:
        print(f"  decontaminate: documents sharing a word {m.decontaminate.ngram}-gram with an item of "
              f"{m.decontaminate.names}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from corpus.paths import corpora_root, mirror_root
    corpora, mirror = corpora_root(), mirror_root()  # the defaults as they are now ($ELM_CORPUS_DATA followed)
    p = argparse.ArgumentParser(prog="elm-corpus",
                                description="OpenELM pretraining corpora: build, stats, verify, inspect.")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build or resume the corpus a manifest names")
    d = sub.add_parser("dedup", help="find the duplicates a manifest's dedup block removes, tokenizing nothing "
                       "(what --stream training reads; a later build of the folder goes on from there)")
    for parser in (b, d):  # the same folder, the same plan: what dedup finds, the build and a stream use
        parser.add_argument("manifest", help="the manifest YAML (e.g. manifests/openelm.yaml)")
        parser.add_argument("--sample", action="store_true", help="read the offline sample mirror instead of upstream")
        parser.add_argument("--out", metavar="URI", help="output folder or URI, e.g. s3://bucket/prefix (default "
                            f"{corpora}/<name>, or <name>-sample with --sample)")
        parser.add_argument("--workers", type=int, default=None, help="parallel workers (default: the machine's or "
                            "the cluster's CPUs)")
        parser.add_argument("--address", default=None, help="Ray cluster address, host:port (default: a local Ray)")
        parser.add_argument("--force", action="store_true", help="rebuild into a fresh folder when the manifest "
                            "changed")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
        parser.set_defaults(func=_build)
    b.add_argument("--reuse", action="append", metavar="DIR", help="take the finished units of this corpus folder "
                   "or URI whose inputs and settings are the same (a shared source) instead of building them; may "
                   "be given more than once; with --force, the folder being built gives the old build it moves "
                   "aside")

    s = sub.add_parser("stats", help="what a corpus holds, per source and per filter")
    s.add_argument("target", nargs="?", default=None, help="corpus name (a folder of --data-dir), folder or URI; "
                   "none: one line per corpus")
    s.add_argument("--json", action="store_true", help="print the numbers as JSON (schema: docs/stats.md)")
    s.add_argument("--report", metavar="DIR", help="write an HTML report with PNG charts to DIR")
    s.add_argument("--data-dir", default=None, help=f"where corpora live (default {corpora})")
    s.set_defaults(func=_stats)

    c = sub.add_parser("verify", help="re-hash every shard against its records; find damaged units")
    c.add_argument("target", help="corpus name (a folder of --data-dir), folder or URI (s3://bucket/prefix)")
    c.add_argument("--repair", action="store_true",
                   help="remove the damaged units' ledger entries and files, so the next build redoes them")
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    c.add_argument("--data-dir", default=None, help=f"where corpora live (default {corpora})")
    c.set_defaults(func=_verify)

    i = sub.add_parser("inspect", help="decode chunks back to text with their provenance")
    i.add_argument("target", nargs="?", default=None, help="corpus name (a folder of --data-dir), folder or URI")
    i.add_argument("--source", default=None, help="draw from this source only (default: every source)")
    i.add_argument("-n", type=int, default=3, help="how many chunks to draw (default 3)")
    i.add_argument("--seed", type=int, default=0, help="seeds the draw; the same seed draws the same chunks "
                   "(default 0)")
    i.add_argument("--shard", default=None, help="one shard file (.bin/.idx/.json) instead of a draw")
    i.add_argument("--index", type=int, default=None, help="chunk index within --shard")
    i.add_argument("--data-dir", default=None, help=f"where corpora live (default {corpora})")
    i.set_defaults(func=_inspect)

    from corpus.cleaning.words import NGRAM
    from corpus.tasks.sets import TASK_SETS
    k = sub.add_parser("contamination", help="how many items of evaluation tasks share a word n-gram with a corpus")
    k.add_argument("target", help="corpus name (a folder of --data-dir), folder or URI (s3://bucket/prefix)")
    k.add_argument("--tasks", required=True, help="lm-eval task names, comma-separated, or a set: "
                   + ", ".join(TASK_SETS))
    k.add_argument("--include-path", default=None, metavar="DIR", help="a folder of extra task YAMLs in lm-eval's "
                   "format")
    k.add_argument("--ngram", type=int, default=NGRAM, help=f"words per n-gram (default {NGRAM}, as GPT-3 and "
                   "lm-eval's decontamination)")
    k.add_argument("--json", action="store_true", help="print the report as JSON (docs/formats.md)")
    k.add_argument("--workers", type=int, default=None, help="parallel scans (default: the machine's or the "
                   "cluster's CPUs)")
    k.add_argument("--address", default=None, help="Ray cluster address, host:port (default: a local Ray, or none "
                   "for a small corpus)")
    k.add_argument("--data-dir", default=None, help=f"where corpora live (default {corpora})")
    k.set_defaults(func=_contamination)

    m = sub.add_parser("sample", help="write the offline sample mirror of a manifest's sources")
    m.add_argument("manifest", help="the manifest YAML whose sources to mirror")
    m.add_argument("--out", default=None, help=f"folder (default {mirror})")
    m.set_defaults(func=_sample)

    v = sub.add_parser("validate", help="check a manifest and print its target mixture")
    v.add_argument("manifest", help="the manifest YAML")
    v.set_defaults(func=_validate)

    from corpus.heldout.cloze import KINDS
    tk = sub.add_parser("tasks", help="write evaluation tasks in lm-eval's format")
    tksub = tk.add_subparsers(dest="tasks_command", required=True)
    tc = tksub.add_parser("cloze", help="multiple-choice cloze tasks cut from text a manifest's --sample build never "
                          "reads (docs/eval.md)")
    tc.add_argument("out", metavar="OUT_DIR", help="folder for each task's YAML and json lines: the --include-path "
                    "of elm-train eval (created if missing; earlier files of the same tasks are replaced)")
    tc.add_argument("--manifest", default="manifests/openelm.yaml", help="the manifest whose sample build the text "
                    "is held out of (default manifests/openelm.yaml)")
    tc.add_argument("--kinds", default=",".join(KINDS), help="comma-separated, a task each (default all): "
                    + "; ".join(f"{k.name}: {k.task}, from {k.what}" for k in KINDS.values()))
    tc.add_argument("--items", type=int, default=500, help="items per task (default 500)")
    tc.add_argument("--seed", type=int, default=0, help="seeds the cut; the same seed gives the same bytes "
                    "(default 0)")
    tc.set_defaults(func=_tasks_cloze)

    t = sub.add_parser("tokenizer", help="tokenizer tools")
    tsub = t.add_subparsers(dest="tokenizer_command", required=True)
    te = tsub.add_parser("export", help="write tokenizer.model, tokenizer.json, tokenizer_config.json")
    te.add_argument("out", help="folder to write the tokenizer files into")
    te.add_argument("--model", default="default", help="SentencePiece .model path/URI (default: the bundled one)")
    te.add_argument("--manifest", default=None, help="take the tokenizer a manifest names")
    te.add_argument("--force", action="store_true", help="replace the tokenizer files of an earlier export in OUT")
    te.set_defaults(func=_tokenizer_export)
    return p


def main(argv: list[str] | None = None) -> int:
    from corpus.manifest import ManifestError
    from corpus.store.location import StoreUnreachable
    if argv is None:  # the command line itself (tests pass argv and keep Python's warnings)
        from corpus.console import warnings_as_notes
        warnings_as_notes("elm-corpus")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # the reader of our output went away (`| head`): not the store's network
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the exit flush cannot fail again
        return 1
    except ManifestError as e:
        print(str(e), file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:
        print(f"elm-corpus {args.command}: error: {e}", file=sys.stderr)
        return 2
    except StoreUnreachable as e:
        print(f"elm-corpus {args.command}: error: {e}; check the network, the endpoint (AWS_ENDPOINT_URL) and "
              f"the credentials", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
