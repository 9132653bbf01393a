"""The run folder: where a run lives, the settings it starts or resumes with, and its `run.json`.

    RUN_DIR/run.json          provenance and progress (RunRecord), rewritten whole after each change
    RUN_DIR/config.yaml       the resolved settings; `--resume` reads them back
    RUN_DIR/metrics.jsonl     model.train.metrics
    RUN_DIR/checkpoints/      model.train.checkpoint
    RUN_DIR/curves.png        model.train.metrics.plot_run
"""
from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from corpus.store.files import atomic_write_json, held_lock, lock_holder, utc_now
from model.train.checkpoint import latest_checkpoint, newest_intact
from model.train.config import RunConfig, TrainConfig, TrainError, checked_config, merge_settings, resolve_config

RUN_JSON = "run.json"
CONFIG_YAML = "config.yaml"
LOCK_FILE = ".run.lock"


@dataclass
class RunPlan:
    """The settings a run starts with, its folder, and the checkpoint it resumes from (None: a new run)."""
    config: RunConfig
    run_dir: Path
    resume_from: Path | None
    nothing_to_resume: bool = False  # --resume was given, but the folder held no run: a new one starts
    passed_over: list[tuple[Path, str]] = field(default_factory=list)  # newer checkpoints found damaged, and how


def prepare_run(yaml_values: dict, flags: dict, resume: bool, world_size: int,
                kind: type[RunConfig] = TrainConfig) -> RunPlan:
    """Resolve the config once (a resumed run starts from its saved one), check it, find the checkpoint to resume."""
    values = merge_settings(yaml_values, flags, kind=kind)
    run_dir = Path(values["out"]) if values.get("out") else kind(**values).default_run_dir()
    saved_path = run_dir / CONFIG_YAML
    # With nothing to resume, --resume starts a new run: the same command then starts a job and restarts it.
    nothing_to_resume = resume and not saved_path.exists()
    if not resume or nothing_to_resume:
        existing = latest_checkpoint(run_dir)
        if existing is not None:
            raise TrainError(f"{run_dir} already holds a run (checkpoint {existing.name}); pass --resume to continue "
                             f"it, or choose another --out")
        cfg = checked_config(kind, values, world_size)  # the layers merged above: no second merge
        cfg.out = str(run_dir)
        return RunPlan(cfg, run_dir, None, nothing_to_resume)
    saved = yaml.safe_load(saved_path.read_text()) or {}
    cfg = resolve_config(yaml_values, flags, world_size, base=saved, kind=kind)
    changed = [k for k in cfg.RESUME_INVARIANTS if saved.get(k) != getattr(cfg, k)]
    if changed:
        raise TrainError(f"--resume: {', '.join(f'{k} ({saved.get(k)!r} -> {getattr(cfg, k)!r})' for k in changed)} "
                         f"differ from the run in {run_dir}; a resumed run must read the same data with the same model")
    cfg.out = str(run_dir)
    resume_from, passed_over = newest_intact(run_dir)
    if passed_over and resume_from is None:
        raise TrainError(f"--resume: every checkpoint of {run_dir} is damaged ("
                         + "; ".join(f"{path.name}: {why}" for path, why in passed_over)
                         + "); move them away to start the run again")
    return RunPlan(cfg, run_dir, resume_from, passed_over=passed_over)


@contextmanager
def run_folder_held(run_dir: Path, main_rank: bool = True) -> Iterator[None]:
    """Hold `run_dir` for this job: a second job (train, finetune, a --resume) on the same folder is refused, naming
    the first's process and host. The lock dies with its process, so a killed job never blocks the next start. Only
    the main rank holds it (torchrun's others share its folder); a folder made here only for the lock is removed."""
    if not main_rank:
        yield
        return
    made = not run_dir.exists()
    lock = run_dir / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": utc_now()}
    try:
        with held_lock(lock, wait=False, holder=me):
            try:
                yield
            finally:
                if made and [p.name for p in run_dir.iterdir()] == [LOCK_FILE]:
                    shutil.rmtree(run_dir, ignore_errors=True)
    except BlockingIOError:
        other = lock_holder(lock)
        raise TrainError(f"{run_dir} is in use by another job (process {other.get('pid', '?')} on "
                         f"{other.get('host', '?')}, since {other.get('since', '?')}); wait for it to end or stop it, "
                         f"or choose another --out") from None


def read_run_json(run_dir: Path) -> dict[str, Any]:
    """The run.json of an earlier run in this folder, {} when there is none."""
    path = run_dir / RUN_JSON
    return json.loads(path.read_text()) if path.exists() else {}


class RunRecord:
    """run.json: what the run is and how far it got. Every rank keeps the fields; rank 0 writes the file."""

    def __init__(self, run_dir: Path, fields: dict[str, Any], enabled: bool):
        self.path = run_dir / RUN_JSON
        self.fields = dict(fields)
        self.enabled = enabled

    def update(self, **fields: Any) -> None:
        """Change fields and rewrite the file (atomically, so a kill leaves the old record or the new)."""
        self.fields.update(fields)
        if self.enabled:
            atomic_write_json(self.path, self.fields)
