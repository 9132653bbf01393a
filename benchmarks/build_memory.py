"""Peak memory of `elm-corpus build` does not grow with the size of an input file.

    .venv/bin/python benchmarks/build_memory.py [--sizes 100 400] [--workers 2]

For each size, one source of one JSON-lines file of that many MB of real text (Python
standard-library sources, the King James Bible, Python's reference topics, repeated in
order) is built by the CLI in a fresh process with the default work-unit size. Reported:
the largest peak RSS of any Ray worker (from the ledger, ``ru_maxrss`` of the worker
process), the driver's, and the peak of the sum of RSS over every process of the build
(driver, Ray's own services, workers), sampled every 0.1 s. Target: the worker peak and
the total for the largest size within 25% of the smallest size's.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def write_input(path: Path, megabytes: float) -> int:
    from corpus.mirror.text import doc_topics, kjv_chapters, stdlib_sources
    pool = [p.text for p in stdlib_sources()] + [p.text for p in kjv_chapters()] + [p.text for p in doc_topics()]
    target, size, i = int(megabytes * 1e6), 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while size < target:
            line = json.dumps({"text": pool[i % len(pool)]}) + "\n"
            f.write(line)
            size += len(line.encode("utf-8"))
            i += 1
    return i


def session_rss_mb(sid: int) -> float:
    """Sum of VmRSS over every process in a session (the build and everything Ray started for it)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[3]) != sid:  # field 6 of /proc/PID/stat: the session id
                continue
            for line in Path(entry.path, "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1024


def measure(size_mb: float, work: Path, workers: int) -> dict:
    data = work / f"input-{size_mb:g}mb.jsonl"
    docs = write_input(data, size_mb)
    manifest = work / f"m-{size_mb:g}.yaml"
    manifest.write_text(f"name: mem{size_mb:g}\nsources:\n  - name: book\n    group: redpajama\n"
                        f"    upstream: {{files: [\"{data}\"]}}\n    format: jsonl\n    tokens: 1M\n")
    out = work / f"out-{size_mb:g}"
    driver_peak = work / f"driver-{size_mb:g}.txt"
    code = ("import resource, sys; from pipelines.cli import main; rc = main(sys.argv[1:]); "
            f"open({str(driver_peak)!r}, 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)); "
            "sys.exit(rc)")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, "build", str(manifest), "--out", str(out),
                             "--workers", str(workers), "--no-progress"], env=env, start_new_session=True)
    peak_total = 0.0
    while proc.poll() is None:
        peak_total = max(peak_total, session_rss_mb(proc.pid))
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"build of {size_mb} MB failed with exit code {proc.returncode}")
    ledger = [json.loads(p.read_text()) for p in (out / "ledger").rglob("*.json")]
    index = json.loads((out / "corpus.json").read_text())
    result = {"mb": size_mb, "documents": docs, "units": len(ledger), "tokens": index["totals"]["tokens"],
              "seconds": seconds, "worker_peak_mb": max(e["peak_rss_mb"] for e in ledger),
              "driver_peak_mb": int(driver_peak.read_text()) / 1024, "total_peak_mb": peak_total}
    shutil.rmtree(out, ignore_errors=True)
    data.unlink()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[100, 400])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="build-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        r = measure(size, work, args.workers)
        rows.append(r)
        print(f"{r['mb']:>6g} MB: {r['units']:>3} units, {r['tokens']:>12,} tokens, {r['seconds']:6.1f} s; "
              f"peak RSS worker {r['worker_peak_mb']:7.1f} MB, driver {r['driver_peak_mb']:7.1f} MB, "
              f"all processes {r['total_peak_mb']:7.1f} MB", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    small, large = rows[0], rows[-1]
    ok = True
    for key, label in (("worker_peak_mb", "worker peak"), ("total_peak_mb", "all processes")):
        change = large[key] / small[key] - 1
        ok &= abs(change) < 0.25
        print(f"{label:<14} {large['mb']:g} MB vs {small['mb']:g} MB: {change * 100:+.1f}% (target within 25%)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
