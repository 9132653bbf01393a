"""What `elm-corpus build --reuse` saves when a manifest changes one source.

    .venv/bin/python benchmarks/build_reuse.py [--repeats 2] [--json]

The sample build of manifests/openelm.yaml, then a second manifest that differs in one source (C4's quality
rules added to refinedweb's filters), built twice per repeat into fresh folders: from scratch, and with
``--reuse`` of the first build. Wall time of each whole `elm-corpus build` command (its Ray start included), the
best of the repeats; the two builds of the changed manifest are checked byte for byte (shards and quarantine)
before anything is printed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "manifests" / "openelm.yaml"
CHANGED_SOURCE = "refinedweb"


def timed_build(manifest: Path, out: Path, *extra: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipelines.cli", "build", str(manifest), "--sample", "--out", str(out),
                    "--no-progress", *extra], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def checksums(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for sub in ("shards", "quarantine") for p in sorted((folder / sub).rglob("*")) if p.is_file()}


def changed_manifest(folder: Path) -> Path:
    """The OpenELM manifest with one source's filters changed, beside the original (so its relative paths hold)."""
    data = yaml.safe_load(MANIFEST.read_text())
    (source,) = [s for s in data["sources"] if s["name"] == CHANGED_SOURCE]
    source["filters"] = [*source.get("filters", []), {"type": "c4_quality"}]
    data["name"] = "openelm-changed"
    path = folder / "openelm-changed.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        changed = changed_manifest(root)
        first = timed_build(MANIFEST, root / "first")
        plan = json.loads((root / "first" / "plan.json").read_text())["units"]
        scratch, reused = [], []
        for n in range(args.repeats):
            scratch.append(timed_build(changed, root / f"scratch-{n}"))
            reused.append(timed_build(changed, root / f"reused-{n}", "--reuse", str(root / "first")))
            assert checksums(root / f"reused-{n}") == checksums(root / f"scratch-{n}"), "reuse changed the bytes"
        ledger = [json.loads(p.read_text()) for p in (root / "reused-0" / "ledger").rglob("*.json")]
        result = {"units": len(plan), "units_reused": sum("reused_from" in e for e in ledger),
                  "units_of_changed_source": sum(u["source"] == CHANGED_SOURCE for u in plan),
                  "first_build_s": round(first, 2), "scratch_s": round(min(scratch), 2),
                  "reused_s": round(min(reused), 2), "speedup": round(min(scratch) / min(reused), 2),
                  "all_scratch_s": [round(t, 2) for t in scratch], "all_reused_s": [round(t, 2) for t in reused]}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['units']} units, {result['units_reused']} reused ({result['units_of_changed_source']} of "
              f"{CHANGED_SOURCE} rebuilt): from scratch {result['scratch_s']} s, with --reuse {result['reused_s']} s, "
              f"{result['speedup']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
