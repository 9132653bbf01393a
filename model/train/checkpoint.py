"""Checkpoints of a run: `RUN_DIR/checkpoints/step_{N:08d}/`, complete or absent, the last K kept.

Each folder holds `model.safetensors` (Hugging Face weight names, float32), `config.json` (the
model's Hugging Face config), `trainer_state.pt` (optimizer, scheduler, sampler and RNG states,
step) and `state.json`, written last, which records the sha256 of every other file. The folder is
assembled under a hidden temporary name and renamed into place, so a process killed mid-save
leaves the previous checkpoints untouched and no `step_*` folder that is incomplete; a file
damaged later (a disk fault, a copy cut short) is found by `damage` against those hashes.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from corpus.store.files import sha256_file, sync_path
from model.hf_folder import CONFIG_FILE

CHECKPOINTS_DIR = "checkpoints"
STEP_PREFIX = "step_"
MODEL_FILE = "model.safetensors"
TRAINER_STATE_FILE = "trainer_state.pt"
STATE_FILE = "state.json"


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR / f"{STEP_PREFIX}{step:08d}"


def checkpoint_step(path: str | Path) -> int | None:
    """N for a folder named step_N, else None."""
    name = Path(path).name
    suffix = name[len(STEP_PREFIX):]
    return int(suffix) if name.startswith(STEP_PREFIX) and suffix.isdigit() else None


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with state.json), oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    found = []
    for path in root.glob(f"{STEP_PREFIX}*"):
        step = checkpoint_step(path)
        if path.is_dir() and step is not None and (path / STATE_FILE).exists():
            found.append((step, path))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def remove_stale_temporaries(run_dir: str | Path) -> None:
    """Drop the leftovers of saves or prunes that a kill interrupted (never a complete checkpoint)."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    for path in root.glob(".*"):
        if path.is_dir() and (path.name.startswith(".tmp-") or path.name.startswith(".trash-")):
            shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(run_dir: str | Path, step: int, model_state: dict[str, torch.Tensor], hf_config: dict,
                    trainer_state: dict[str, Any], state: dict[str, Any], keep: int,
                    extra_files: dict[str, bytes] | None = None) -> Path:
    """Write checkpoint `step` atomically, then delete all but the newest `keep` checkpoints.

    `extra_files` (relative path: bytes) go into the folder too, e.g. a fine-tuning run's adapter.
    """
    root = Path(run_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir(run_dir, step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()

    tensors = {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in model_state.items()}
    save_file(tensors, str(tmp / MODEL_FILE), metadata={"format": "pt", "step": str(step)})
    (tmp / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
    torch.save(trainer_state, tmp / TRAINER_STATE_FILE)
    for name, data in (extra_files or {}).items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(data)
    hashes = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    (tmp / STATE_FILE).write_text(json.dumps(dict(state, step=step, files=hashes), indent=2, sort_keys=True) + "\n")
    for path in sorted(tmp.rglob("*"), reverse=True):  # files before the folders holding them
        sync_path(path)
    sync_path(tmp)

    if final.exists():  # a rerun of a step after resuming from an earlier checkpoint
        trash = root / f".trash-{final.name}-{os.getpid()}"
        os.replace(final, trash)
        shutil.rmtree(trash)
    os.replace(tmp, final)
    sync_path(root)
    prune_checkpoints(run_dir, keep)
    return final


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints; each is renamed away before deletion."""
    found = list_checkpoints(run_dir)
    for _, path in found[:max(0, len(found) - keep)]:
        trash = path.parent / f".trash-{path.name}-{os.getpid()}"
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)


def damage(path: str | Path) -> str | None:
    """What is wrong with a complete checkpoint's files against the hashes its state.json records (None: nothing,
    or a checkpoint from before hashes were recorded)."""
    path = Path(path)
    try:
        recorded = json.loads((path / STATE_FILE).read_text()).get("files") or {}
    except (OSError, ValueError) as e:
        return f"{STATE_FILE} cannot be read ({e})"
    for name, sha256 in sorted(recorded.items()):
        if not (path / name).is_file():
            return f"{name} is missing"
        if sha256_file(path / name) != sha256:
            return f"{name} is damaged (its sha256 differs from the one written when it was saved)"
    return None


def newest_intact(run_dir: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint whose files match their hashes, and the newer ones passed over with what is wrong."""
    passed_over = []
    for _, path in reversed(list_checkpoints(run_dir)):
        why = damage(path)
        if why is None:
            return path, passed_over
        passed_over.append((path, why))
    return None, passed_over


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(model state, trainer state, state.json) of one checkpoint folder, tensors on the CPU."""
    path = Path(path)
    if not (path / STATE_FILE).exists():
        raise FileNotFoundError(f"{path}: not a complete checkpoint (no {STATE_FILE})")
    model_state = load_file(str(path / MODEL_FILE))
    # The trainer state holds numpy RNG and sampler states as well as tensors; it is this trainer's own file.
    trainer_state = torch.load(path / TRAINER_STATE_FILE, map_location="cpu", weights_only=False)
    state = json.loads((path / STATE_FILE).read_text())
    return model_state, trainer_state, state


def capture_rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from, for a bit-exact resume."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
