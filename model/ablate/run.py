"""Running an ablation: each distinct corpus built once, a proxy trained and evaluated per variant and seed, then
the report.

Every step is the command a user would type, run as a child process: `elm-corpus build` for a corpus,
`elm-train --config ... --resume` for a trial's training and `elm-train eval ... --out` for its scores. A trial's
run folder is therefore an ordinary one (`elm-train eval`, `compare`, `export` and `--resume` accept it), a
crash in one trial is that trial's alone, and the ablation adds no second way of training or scoring.

OUT/
    corpora/<manifest>[-sample]-<key>/   one build per corpus identity (variants that differ in weights share it;
                                         the units of a source two corpora read alike are built once: --reuse)
    trials/<variant>/seed-<n>/           the trial's run folder
    trials/<variant>/seed-<n>.json       the trial's record: identity key, status, eval file, log (written last)
    evals/<variant>/seed-<n>.json        `elm-train eval --out` of the trial
    logs/                                each build's and each trial's output
    report.json, report.html

Rerunning the same command continues: a build resumes (elm-corpus keeps its finished units), a trial whose
record says finished with the same identity is not touched, a trial that was cut off resumes from its newest
checkpoint, and one whose settings changed starts again in a clean folder. A variant or seed added to the spec
only adds trials. A failed trial is reported with its log and does not stop the others; the next run retries it.

Parallel trials: on one machine, ``parallel`` child processes at once, the machine's CPU threads split among
them (the run's `threads` setting); on a Ray cluster (``ray_address``), one Ray task per trial asking for the
CPUs and GPUs a trial needs, so Ray places them. The folder must then be one every node sees (a shared file
system), as for the build.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from corpus.store.files import atomic_write_json
from model.ablate.report import FAILED, FINISHED, TaskScores, TrialResult, build_report, write_report
from model.ablate.spec import AblationSpec, Variant, corpus_identity, identity_key, trial_identity
from model.eval.item_scores import METRICS, item_scores

CORPORA, TRIALS, EVALS, LOGS = "corpora", "trials", "evals", "logs"


@dataclass(frozen=True)
class Build:
    """One corpus to build, and the variants that train on it."""
    key: str
    manifest: str
    sample: bool
    folder: str
    variants: tuple[str, ...]

    @property
    def log(self) -> str:
        return str(Path(self.folder).parent.parent / LOGS / f"build-{Path(self.folder).name}.log")


@dataclass(frozen=True)
class Trial:
    """One proxy: a variant's corpus and settings with one seed, and where its files go."""
    variant: str
    seed: int
    key: str                    # identity_key(trial_identity(...)): a finished trial with another key is stale
    corpus: str                 # the built corpus folder
    settings: dict[str, Any]    # the run config (elm-train --config), less the corpus
    run_dir: str
    record: str
    eval_file: str
    log: str
    tasks: str                  # elm-train eval --tasks
    include_path: str | None


def plan(spec: AblationSpec, out: Path) -> tuple[list[Build], list[Trial]]:
    """The builds and trials of ``spec`` in ``out``, in spec order."""
    builds: dict[str, Build] = {}
    trials = []
    for v in spec.variants:
        key = identity_key(corpus_identity(spec, v))
        name = f"{Path(v.manifest).stem}{'-sample' if v.sample else ''}-{key[:10]}"
        build = builds.get(key) or Build(key, str(spec.manifest_path(v)), v.sample, str(out / CORPORA / name), ())
        builds[key] = Build(**{**asdict(build), "variants": build.variants + (v.name,)})
        for seed in spec.seeds:
            trials.append(_trial(spec, v, seed, out, builds[key].folder))
    return list(builds.values()), trials


def _trial(spec: AblationSpec, v: Variant, seed: int, out: Path, corpus: str) -> Trial:
    settings = spec.run_settings(v, seed)
    name = f"seed-{seed}"
    return Trial(v.name, seed, identity_key(trial_identity(spec, v, seed)), corpus, settings,
                 str(out / TRIALS / v.name / name), str(out / TRIALS / v.name / f"{name}.json"),
                 str(out / EVALS / v.name / f"{name}.json"), str(out / LOGS / f"{v.name}-{name}.log"),
                 ",".join(spec.task_list), str(spec.include_dir.resolve()) if spec.include_dir else None)


def read_record(trial: Trial) -> dict | None:
    try:
        return json.loads(Path(trial.record).read_text())
    except (OSError, ValueError):
        return None


TRAINED = "trained"  # a trial's record between its training and its evaluation


def is_done(trial: Trial) -> bool:
    """Finished with the same identity, scored on the same tasks, and its scores are there: nothing to redo."""
    record = read_record(trial)
    return (record is not None and record.get("status") == FINISHED and record.get("key") == trial.key
            and record.get("tasks") == [trial.tasks, trial.include_path] and Path(trial.eval_file).is_file())


def _trained(trial: Trial, record: dict | None) -> bool:
    """The proxy is trained (only its scores are missing, or were for other tasks)."""
    return record is not None and record.get("key") == trial.key and record.get("status") in (TRAINED, FINISHED)


# ---------------------------------------------------------------- the steps, as child processes

def _command(module: str, *args: str) -> list[str]:
    """`elm-corpus`/`elm-train` as this interpreter runs them (the same code, whatever PATH holds)."""
    return [sys.executable, "-m", module, *args]


def _run(command: list[str], log: Path, env: dict[str, str] | None = None) -> str | None:
    """Run ``command`` with its output appended to ``log``; None when it succeeds, else the last line it printed."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"$ {' '.join(command)}\n")
        f.flush()
        code = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if code == 0:
        return None
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return f"exit {code}: {lines[-1].strip() if lines else 'no output'}"


def build_command(build: Build, others: list[Build], ray_address: str | None = None) -> list[str]:
    """`elm-corpus build` of one corpus, taking the finished units of the ablation's other corpora that it shares
    (a source read with the same settings: pipelines/reuse.py) instead of tokenizing them again."""
    reuse = [a for b in others if b.folder != build.folder and (Path(b.folder) / "plan.json").is_file()
             for a in ("--reuse", b.folder)]
    args = [build.manifest, "--out", build.folder, "--no-progress"] + (["--sample"] if build.sample else []) \
        + (["--address", ray_address] if ray_address else []) + reuse
    return _command("pipelines.cli", "build", *args)


def run_build(build: Build, others: list[Build], ray_address: str | None = None) -> str | None:
    """Build (or finish building) one corpus; None when it is complete, else why not."""
    if (Path(build.folder) / "corpus.json").is_file():
        return None  # written last by a finished build
    return _run(build_command(build, others, ray_address), Path(build.log))


def run_trial(trial: Trial, node: str | None = None) -> dict:
    """Train and evaluate one trial (resuming what a cut-off attempt left); returns its record, also written to
    its file last. ``node``: the Ray node it runs on, recorded with the host and process."""
    run_dir, record = Path(trial.run_dir), read_record(trial)
    log = Path(trial.log)
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(trial.settings["threads"])} if "threads" in trial.settings
                               else {}))
    error = None
    if not _trained(trial, record):
        if run_dir.exists() and (record is None or record.get("key") != trial.key):
            shutil.rmtree(run_dir)  # made by this ablation for other settings: start clean rather than resume it
        atomic_write_json(Path(trial.record), {"key": trial.key, "status": "started"})
        config = run_dir.parent / f"seed-{trial.seed}.yaml"
        config.write_text(yaml.safe_dump({**trial.settings, "corpus": trial.corpus}, sort_keys=True))
        error = _run(_command("model.cli", "train", "--config", str(config), "--out", str(run_dir), "--resume"),
                     log, env)
        if error is None:
            atomic_write_json(Path(trial.record), {"key": trial.key, "status": TRAINED})
    if error is None:
        Path(trial.eval_file).parent.mkdir(parents=True, exist_ok=True)
        args = [str(run_dir), "--tasks", trial.tasks, "--out", trial.eval_file] + (
            ["--include-path", trial.include_path] if trial.include_path else [])
        error = _run(_command("model.cli", "eval", *args), log, env)
    done = {"key": trial.key, "status": FINISHED if error is None else FAILED, "log": trial.log,
            "tasks": [trial.tasks, trial.include_path], "eval": trial.eval_file if error is None else None,
            "error": error,
            "ran_on": {"host": socket.gethostname(), "pid": os.getpid(), **({"node": node} if node else {})}}
    atomic_write_json(Path(trial.record), done)
    return done


def _on_ray(trials: list[Trial], ray_address: str, cpus: int, gpus: float, say: Callable[[str], None]) -> None:
    """One Ray task per trial, each asking for the resources a trial takes: Ray decides where and when."""
    import ray
    if not ray.is_initialized():
        ray.init(address=ray_address)
    remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(_run_trial_on_ray)
    pending = {remote.remote(t): t for t in trials}
    while pending:
        (ready,), _ = ray.wait(list(pending), num_returns=1)
        trial = pending.pop(ready)
        try:
            record = ray.get(ready)
        except Exception as e:  # noqa: BLE001 - the task died (node lost): that trial fails, the rest go on
            record = {"key": trial.key, "status": FAILED, "log": trial.log, "eval": None,
                      "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            atomic_write_json(Path(trial.record), record)
        say(_said(trial, record))


def _run_trial_on_ray(trial: Trial) -> dict:
    import ray
    return run_trial(trial, node=ray.get_runtime_context().get_node_id())


def _said(trial: Trial, record: dict) -> str:
    state = "done" if record["status"] == FINISHED else f"FAILED ({record['error']}; log {trial.log})"
    return f"trial {trial.variant} seed {trial.seed}: {state}"


# ---------------------------------------------------------------- the whole ablation

def run_ablation(spec: AblationSpec, out: str | Path, parallel: int | None = None, ray_address: str | None = None,
                 gpus_per_trial: float = 0, say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Build, train, evaluate what is not done yet, then write the report; returns report.json's content."""
    out = Path(out).resolve()
    cpus = os.cpu_count() or 1
    builds, trials = plan(spec, out)
    todo = [t for t in trials if not is_done(t)]
    parallel = parallel or max(1, min(len(todo), cpus))
    if not ray_address:  # the machine's threads split among the trials that run at once, unless the spec sets them
        todo = [replace(t, settings={"threads": max(1, cpus // parallel), **t.settings}) for t in todo]
    say(f"ablation {spec.name}: {len(builds)} corpus build(s), {len(trials)} trials, {len(trials) - len(todo)} "
        f"already done")
    failed_builds = {}
    for build in builds:
        if any(t.corpus == build.folder for t in todo):
            error = run_build(build, builds, ray_address)
            say(f"corpus {Path(build.folder).name} ({', '.join(build.variants)}): "
                f"{'ready' if error is None else f'FAILED ({error}; log {build.log})'}")
            if error is not None:
                failed_builds[build.folder] = (error, build.log)
    runnable = []
    for t in todo:
        if t.corpus in failed_builds:
            error, log = failed_builds[t.corpus]
            atomic_write_json(Path(t.record), {"key": t.key, "status": FAILED, "log": log, "eval": None,
                                               "error": f"the corpus build failed: {error}"})
        else:
            runnable.append(t)
    if ray_address:  # a trial asks for the CPUs it trains with: the spec's `threads`, else one
        _on_ray(runnable, ray_address, spec.train.get("threads", 1), gpus_per_trial, say)
    else:
        with ThreadPoolExecutor(max_workers=parallel) as pool:  # each thread waits on one child process
            running = {pool.submit(run_trial, t): t for t in runnable}
            for future in as_completed(running):  # said as each ends, whatever the order they started in
                say(_said(running[future], future.result()))
    report = build_report(spec, [trial_result(t) for t in trials])
    write_report(out, report)
    return report


def trial_result(trial: Trial) -> TrialResult:
    """What the report needs of one trial, from its record and eval file."""
    record = read_record(trial) or {"status": FAILED, "error": "never ran", "log": trial.log}
    if record.get("status") != FINISHED:
        return TrialResult(trial.variant, trial.seed, Path(trial.run_dir), FAILED, Path(record.get("log") or
                           trial.log), error=record.get("error"))
    results = json.loads(Path(trial.eval_file).read_text())
    marks = (results.get("contamination") or {}).get("tasks") or {}
    tasks = {}
    for task, items in item_scores(results).items():
        row = results.get("results", {}).get(task, {})
        # a metric some item lacks (acc_norm a task does not score) cannot be resampled over items: left out
        tasks[task] = TaskScores(items={m: getattr(items, m) for m in METRICS if None not in getattr(items, m)},
                                 values={m: row[f"{m},{items.filter}"] for m in METRICS if f"{m},{items.filter}" in row},
                                 contamination=marks.get(task))
    return TrialResult(trial.variant, trial.seed, Path(trial.run_dir), FINISHED, Path(trial.log), tasks)
