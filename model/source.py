"""A model named on the command line: a run folder (its newest checkpoint), one checkpoint, or a
Hugging Face-format OpenELM folder (an export, Apple's release); and the tokenizer that goes with it.

`elm-train export` and `elm-train eval` take their MODEL argument through here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from model.hf_folder import CONFIG_FILE, read_json_object
from model.train import checkpoint as ckpt
from model.train.run import RUN_JSON


class SourceError(ValueError):
    """A model folder or tokenizer that cannot be used; the message names it and the way out."""


@dataclass
class ModelSource:
    """Where a model's weights come from and what is known about how they were made."""

    weights_dir: Path
    run_dir: Path | None = None
    run: dict = field(default_factory=dict)
    step: int | None = None
    state: dict = field(default_factory=dict)  # the checkpoint's state.json: its own losses and token count


def read_json(path: Path) -> dict:
    """A JSON object file, {} when absent; a clear error when it is not valid."""
    if not path.is_file():
        return {}
    return read_json_object(path, SourceError)


def resolve_source(path: str | Path, step: int | None = None, verify: bool = True) -> ModelSource:
    """A run folder, one of its checkpoints, or a plain HF-format folder; a checkpoint whose files differ from the
    hashes it recorded is refused unless `verify` is off (a caller that reads only its config.json)."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"{path}: no such run or model folder")
    if (path / ckpt.CHECKPOINTS_DIR).is_dir():
        checkpoints = dict(ckpt.list_checkpoints(path))
        if not checkpoints:
            raise SourceError(f"{path}: the run has no finished checkpoint under checkpoints/ yet")
        chosen = max(checkpoints) if step is None else step
        if chosen not in checkpoints:
            raise SourceError(f"{path}: no checkpoint for step {step}; it has steps {sorted(checkpoints)}")
        folder = checkpoints[chosen]
        if verify:
            _refuse_damaged(folder, sorted(checkpoints))
        return ModelSource(folder, path, read_json(path / RUN_JSON), chosen, read_json(folder / ckpt.STATE_FILE))
    step_of_folder = ckpt.checkpoint_step(path)
    if step_of_folder is not None and path.parent.name == ckpt.CHECKPOINTS_DIR:
        run_dir = path.parent.parent
        if verify:
            _refuse_damaged(path, [s for s, _ in ckpt.list_checkpoints(run_dir)])
        return ModelSource(path, run_dir, read_json(run_dir / RUN_JSON), step_of_folder,
                            read_json(path / ckpt.STATE_FILE))
    if (path / CONFIG_FILE).is_file():
        if step is not None:
            raise SourceError(f"{path}: --step applies to a run folder; this is a single model folder")
        return ModelSource(path)
    raise SourceError(f"{path}: neither a run folder (no checkpoints/) nor a Hugging Face-format folder "
                      f"(no {CONFIG_FILE})")


def _refuse_damaged(folder: Path, steps: list[int]) -> None:
    why = ckpt.damage(folder)
    if why is not None:
        others = [s for s in steps if s != ckpt.checkpoint_step(folder)]
        choose = (f"choose another checkpoint (steps {', '.join(map(str, others))}) with --step N or by its folder"
                  if others else "the run has no other checkpoint")
        raise SourceError(f"{folder}: {why}; {choose}")


def run_field(run: dict, dotted: str):
    """run.json's value at a dotted path (`corpus.fingerprint`), None when the run does not record it."""
    value = run
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def resolve_tokenizer(source: ModelSource, explicit: str | None):
    """--tokenizer, else the one run.json records (its sha256 checked), else a tokenizer.model beside the weights."""

    recorded = run_field(source.run, "tokenizer.sha256")
    spec = run_field(source.run, "tokenizer.spec")
    beside = source.weights_dir / "tokenizer.model"
    if explicit:
        tokenizer, where = _open_tokenizer(explicit, "--tokenizer"), "--tokenizer"
    elif isinstance(spec, str):
        tokenizer, where = _open_tokenizer(spec, f"{source.run_dir}/run.json"), f"run.json's {spec}"
    elif beside.is_file():
        tokenizer, where = _open_tokenizer(str(beside), str(beside)), str(beside)
    else:
        raise SourceError(f"{source.weights_dir}: no tokenizer recorded or included (Apple's checkpoints ship none; "
                          "they use LLaMA-2's); pass --tokenizer PATH/tokenizer.model, or --tokenizer default for "
                          "this project's default model")
    if recorded and recorded != tokenizer.sha256:
        raise SourceError(f"{source.run_dir}/{RUN_JSON}: the run was trained with tokenizer sha256 {recorded}, but "
                          f"{where} has {tokenizer.sha256}; pass --tokenizer with the model the run was trained with")
    return tokenizer


def _open_tokenizer(spec: str, where: str):
    from corpus.tokenizer.tokenizer import Tokenizer
    try:
        return Tokenizer(spec)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        raise SourceError(f"{where}: cannot open tokenizer {spec!r}: {e}") from None
