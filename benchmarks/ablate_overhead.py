"""What `elm-train ablate` costs beyond its work, and what running its trials in parallel gains.

    .venv/bin/python benchmarks/ablate_overhead.py [--steps 30] [--items 100] [--json]

One small ablation (the `tiny` proxy, two variants of the sample corpus that differ in weights, one seed, the
held-out cloze tasks of `elm-corpus tasks cloze`), three times, each in a fresh folder so each builds its corpus:

- ``by hand``: the commands a user would type, one after the other: `elm-corpus build --sample`, then per trial
  `elm-train --config ... --out RUN` and `elm-train eval RUN --tasks ... --out FILE` (the configs are the ones
  the ablation writes, threads as `ablate --parallel 1` gives them);
- ``ablate --parallel 1``: the same work through `elm-train ablate`, trials one after the other
  (target: at most 1.05x the by-hand wall time);
- ``ablate --parallel 2``: the trials two at a time, each with half the threads (target: at least 1.6x the
  throughput of running them one after the other, in trials per hour, over the whole command, build included),
  against two ways of running them one after the other: ``--parallel 1`` as it runs by default (each trial with
  every thread), and ``--parallel 1`` with the same one-thread trials as ``--parallel 2`` (the spec's
  ``train: {threads: 1}``), which holds the trials fixed and measures the scheduling alone.

Every number comes from this run, on this machine; the cloze tasks are written once, before any timing.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
PY = sys.executable


def spec(tasks: Path, steps: int, threads: int | None = None) -> dict:
    manifest = str(REPO / "manifests" / "openelm.yaml")
    return {"name": "overhead", "model": "tiny", "steps": steps, "seeds": [0],
            "tasks": ["mirror_prose_cloze", "mirror_code_cloze"], "include_path": str(tasks),
            "train": {"eval_every": 1000, **({"threads": threads} if threads else {})},
            "variants": [
                {"name": "books", "manifest": manifest, "sample": True,
                 "weights": {"redpajama-books": 1, "dolma-gutenberg": 1}},
                {"name": "code", "manifest": manifest, "sample": True,
                 "weights": {"redpajama-github": 1, "dolma-stack": 1}}]}


def timed(command: list[str], log: Path) -> float:
    start = time.perf_counter()
    with open(log, "a") as f:
        subprocess.run(command, check=True, stdout=f, stderr=subprocess.STDOUT)
    return time.perf_counter() - start


def by_hand(spec_path: Path, out: Path, log: Path) -> float:
    """The ablation's commands typed one after the other (its plan says which and with what settings)."""
    from model.ablate.run import plan
    from model.ablate.spec import load_spec
    builds, trials = plan(load_spec(spec_path), out)
    cpus = os.cpu_count() or 1
    start = time.perf_counter()
    for b in builds:
        timed([PY, "-m", "pipelines.cli", "build", b.manifest, "--sample", "--out", b.folder, "--no-progress"], log)
    for t in trials:
        config = out / f"{t.variant}-{t.seed}.yaml"
        config.write_text(yaml.safe_dump({**t.settings, "threads": cpus, "corpus": t.corpus}))
        timed([PY, "-m", "model.cli", "train", "--config", str(config), "--out", t.run_dir], log)
        timed([PY, "-m", "model.cli", "eval", t.run_dir, "--tasks", t.tasks, "--include-path", t.include_path,
               "--out", str(out / f"{t.variant}-{t.seed}.json")], log)
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per trial")
    p.add_argument("--items", type=int, default=100, help="items per cloze task")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="ablate-overhead-"))
    tasks = root / "tasks"
    subprocess.run([PY, "-m", "pipelines.cli", "tasks", "cloze", str(tasks), "--items", str(args.items)],
                   check=True, stdout=subprocess.DEVNULL)
    spec_path = root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec(tasks, args.steps)))
    log = root / "commands.log"
    load_start = os.getloadavg()[0]
    one_thread = root / "one-thread.yaml"
    one_thread.write_text(yaml.safe_dump(spec(tasks, args.steps, threads=1)))
    seconds = {"by_hand": by_hand(spec_path, root / "by-hand", log)}
    for name, parallel, path in (("ablate_parallel_1", 1, spec_path), ("ablate_parallel_2", 2, spec_path),
                                 ("ablate_parallel_1_one_thread", 1, one_thread)):
        seconds[name] = timed([PY, "-m", "model.cli", "ablate", str(path), "--out", str(root / name),
                               "--parallel", str(parallel)], log)
    result = {"steps": args.steps, "items": args.items, "trials": 2, "cpus": os.cpu_count(),
              "seconds": {k: round(v, 1) for k, v in seconds.items()},
              "ablate_vs_by_hand": round(seconds["ablate_parallel_1"] / seconds["by_hand"], 3),
              "parallel_2_throughput_vs_1": round(seconds["ablate_parallel_1"] / seconds["ablate_parallel_2"], 2),
              "parallel_2_throughput_vs_1_same_trials": round(
                  seconds["ablate_parallel_1_one_thread"] / seconds["ablate_parallel_2"], 2),
              "load_average_start": load_start, "load_average_end": os.getloadavg()[0], "folder": str(root)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name, s in result["seconds"].items():
            print(f"{name:<20} {s:7.1f} s")
        print(f"ablate --parallel 1 vs by hand: {result['ablate_vs_by_hand']:.3f}x wall time (target <= 1.05x)")
        print(f"--parallel 2 vs --parallel 1: {result['parallel_2_throughput_vs_1']:.2f}x throughput "
              f"(target >= 1.6x); vs --parallel 1 of the same one-thread trials: "
              f"{result['parallel_2_throughput_vs_1_same_trials']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
