"""What `elm-corpus build --reuse` saves when a manifest gains a source (an ablation's "the same, plus X").

    .venv/bin/python benchmarks/build_reuse.py [--mb 48] [--sources 4] [--repeats 2] [--json]

Real text (build_throughput.py's: Python standard-library sources, the King James Bible, Python's reference
topics, then the installed packages' Python sources), cut into ``--sources`` + 1 JSON-lines files of equal size,
one source each, in 1 MiB work units. The first manifest reads the first ``--sources`` of them; the second reads
the same and the last one. Per repeat, the second manifest is built twice into fresh folders: from scratch, and
with ``--reuse`` of the first build; 2 workers, the build's own Ray started and stopped inside each timing, as
the command does. The two builds are checked byte for byte (shards and quarantine) before anything is printed.
Medians over ``--repeats``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
UNIT_BYTES = 1 << 20


def write_sources(root: Path, mb: float, sources: int) -> list[Path]:
    from build_throughput import real_documents
    docs = real_documents(int(mb * 1e6))
    per = -(-len(docs) // sources)
    files = []
    for k in range(sources):
        path = root / "input" / f"part-{k}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs[k * per:(k + 1) * per]))
        files.append(path)
    return files


def write_manifest(path: Path, files: list[Path]) -> Path:
    lines = [f"name: {path.stem}", "sources:"]
    for k, f in enumerate(files):
        lines += [f"  - name: s{k}", "    group: redpajama", f"    upstream: {{files: [\"{f}\"]}}",
                  "    format: jsonl", "    tokens: 1M"]
    path.write_text("\n".join(lines) + "\n")
    return path


def timed_build(manifest: Path, out: Path, reuse: list[Path] = ()) -> tuple[float, object]:
    from pipelines.build import build
    start = time.perf_counter()
    result = build(manifest, out, workers=2, progress=False, unit_bytes=UNIT_BYTES, reuse=list(reuse))
    return time.perf_counter() - start, result


def checksums(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for sub in ("shards", "quarantine") for p in sorted((folder / sub).rglob("*")) if p.is_file()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=48)
    ap.add_argument("--sources", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from pipelines.runner import require_token_auth
    require_token_auth()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = write_sources(root, args.mb, args.sources + 1)
        first_manifest = write_manifest(root / "first.yaml", files[:-1])
        changed = write_manifest(root / "changed.yaml", files)
        first_s, first = timed_build(first_manifest, root / "first")
        scratch, reused, result = [], [], None
        for n in range(args.repeats):
            t, clean = timed_build(changed, root / f"scratch-{n}")
            scratch.append(t)
            t, result = timed_build(changed, root / f"reused-{n}", [root / "first"])
            reused.append(t)
            assert checksums(root / f"reused-{n}") == checksums(root / f"scratch-{n}"), "reuse changed the bytes"
        out = {"mb": args.mb, "sources": args.sources, "units": first.units_total, "units_second": result.units_total,
               "units_reused": result.units_reused, "units_built": result.units_run,
               "first_build_s": round(first_s, 2), "scratch_s": round(statistics.median(scratch), 2),
               "reused_s": round(statistics.median(reused), 2),
               "speedup": round(statistics.median(scratch) / statistics.median(reused), 2),
               "all_scratch_s": [round(t, 2) for t in scratch], "all_reused_s": [round(t, 2) for t in reused]}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        per = args.mb / (args.sources + 1)
        print(f"{out['units']} units in {args.sources} sources, one more source of {per:g} MB: from "
              f"scratch {out['scratch_s']} s, with --reuse {out['reused_s']} s ({out['units_reused']} units taken, "
              f"{out['units_built']} built): {out['speedup']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
