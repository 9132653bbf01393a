"""`elm-train eval`: a model folder evaluated by lm-evaluation-harness on named tasks or task sets.

The model is any folder `model.source` resolves (a run, a checkpoint, an export, Apple's
release) with its tokenizer; the harness (`lm_eval.simple_evaluate`) runs the tasks on it
through `model.eval.lm.OpenELMLM` (or, with `backend="mlx"`, an MLX export through
`model.eval.mlx.MLXOpenELMLM`). A set's tasks run in groups of equal few-shot count and
their results are merged into one lm-eval results dict.

Every multiple-choice task also gets `bpb`, bits per byte of the gold continuation (lower is better), and the
results keep each item's acc, acc_norm and bpb under `items` (`model.eval.item_scores`), for every backend alike.

When the model is a run's checkpoint, the results say which tasks the run's corpus was checked for and how many
of their items it held (`model.eval.contamination`), for each row of the results: a group's, its subtasks'.

Tasks are found and their data checked by corpus.tasks (which `elm-corpus contamination` shares): when the Hub
cannot be reached, the run goes offline before the harness loads anything, so a dataset missing from the cache
fails in about a second with what to fetch, rather than after a minute of retries.
"""
from __future__ import annotations

import contextlib
import functools
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from corpus.store.files import atomic_write_json, utc_now
from corpus.tasks.groups import leaf_tasks
from corpus.tasks.manager import TaskError, go_offline_unless_hub_reachable, load_tasks, quiet_loading
from corpus.tasks.manager import known_tasks_manager as _known_tasks_manager
from corpus.tasks.manager import templates_compiled_once
from corpus.tasks.sets import expand_tasks, task_names
from model.eval.contamination import corpus_contamination
from model.eval.item_scores import add_item_scores, score_tasks
from model.hf_folder import load_hf_folder
from model.presets import preset_name
from model.source import ModelSource, resolve_source, resolve_tokenizer

if TYPE_CHECKING:
    from model.train.config import TrainConfig
    from model.train.data import TrainingData
    from model.train.distributed import Cluster

class EvalError(RuntimeError):
    """An evaluation that cannot run; the message names the task or dataset and what to do."""


@dataclass
class Evaluation:
    results: dict[str, Any]     # lm-eval's output: results, configs, versions, n-shot, (samples), config
    preset: str | None          # the preset the model's shapes are, if any
    source: ModelSource


def load_model(path: str | Path, tokenizer: str | None = None, device: str = "auto", step: int | None = None,
               adapter: str | Path | None = None):
    """(OpenELM on `device` in eval mode, its Tokenizer, where it came from) for a model folder, with the PEFT
    `adapter` folder applied to it when given."""
    source = resolve_source(path, step)
    config, model = load_hf_folder(source.weights_dir)
    if adapter is not None:
        model = apply_adapter(model, adapter)
    sp = resolve_tokenizer(source, tokenizer)
    if sp.vocab_size != config.vocab_size:
        raise EvalError(f"{source.weights_dir}: the model has a vocabulary of {config.vocab_size} but the tokenizer "
                        f"{sp.spec} has {sp.vocab_size} pieces; pass --tokenizer with the model it was trained with")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), sp, source


def apply_adapter(model, folder: str | Path):
    """`model` with the PEFT adapter folder `folder` put into it; a folder that does not fit is an EvalError."""
    from model.adapters.lora import AdapterError, load_adapter_folder  # PEFT loads only when asked
    try:
        return load_adapter_folder(model, folder)
    except AdapterError as e:
        raise EvalError(f"--adapter: {e}") from None


@dataclass(frozen=True)
class Backend:
    """A way to run a model folder under the harness. `load(path, tokenizer, batch_size, add_bos, device, step,
    adapter)` returns (the harness LM, its ModelSource, the preset the weights are or None)."""
    help: str
    load: Callable[..., tuple[Any, ModelSource, str | None]]


def _torch_backend(path, tokenizer, batch_size, add_bos, device, step, adapter):
    from model.eval.lm import OpenELMLM
    model, sp, source = load_model(path, tokenizer, device, step, adapter)
    return OpenELMLM(model, sp, batch_size=batch_size, add_bos=add_bos), source, preset_name(model.config)


def _mlx_backend(path, tokenizer, batch_size, add_bos, device, step, adapter):
    if adapter is not None:
        raise EvalError("--adapter applies to the torch backend; for MLX, evaluate the merged export "
                        "(elm-train export RUN --format mlx)")
    from model.eval.mlx import load_mlx_lm  # mlx loads only when asked
    return load_mlx_lm(path, tokenizer, batch_size=batch_size, add_bos=add_bos, device=device, step=step)


# Where a new backend goes: its LM in a module of this package, one line here (the CLI's choices read this).
BACKENDS: dict[str, Backend] = {
    "torch": Backend("the project's PyTorch OpenELM (runs, checkpoints, HF folders; --adapter)", _torch_backend),
    "mlx": Backend("the model run by mlx-lm, for an MLX export", _mlx_backend),
}


def evaluate(path: str | Path, tasks: str, num_fewshot: int | None = None, limit: int | float | None = None,
             batch_size: int = 8, device: str = "auto", add_bos: bool = True, include_path: str | None = None,
             log_samples: bool = False, tokenizer: str | None = None, step: int | None = None,
             backend: str = "torch", adapter: str | None = None, verbose: bool = False) -> Evaluation:
    """Run the harness on `tasks` (lm-eval names and/or the sets of `model.eval.tasks`); see the module docstring.

    `backend="mlx"` evaluates an MLX export with mlx-lm's model (`model.eval.mlx`); the answers are the torch
    backend's on the same weights.
    """
    if backend not in BACKENDS:
        raise EvalError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    go_offline_unless_hub_reachable()  # before anything imports `datasets`
    lm, source, preset = BACKENDS[backend].load(path, tokenizer, batch_size, add_bos, device, step, adapter)
    sp = lm.sp
    merged, wanted = run_tasks(lm, tasks, num_fewshot, limit, include_path, log_samples, verbose)
    merged["config"] = {"model": str(path), "weights": str(source.weights_dir), "tokenizer": sp.spec,
                        "tokenizer_sha256": sp.sha256, "add_bos_token": add_bos, "batch_size": batch_size,
                        "backend": backend, "device": str(lm.device), "limit": limit, "adapter": adapter,
                        "tasks": [[t, s] for t, s in wanted], "include_path": include_path}
    manager = known_tasks_manager([t for t, _ in wanted], include_path)  # the one run_tasks used (built once)
    contamination = corpus_contamination(source, list(merged.get("results", {})),
                                         functools.lru_cache(maxsize=None)(functools.partial(leaf_tasks, manager)))
    if contamination is not None:  # a run trained on a corpus folder: what it says of these tasks
        merged["contamination"] = contamination
    return Evaluation(merged, preset, source)


PER_TASK_KEYS = ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better",
                 "n-samples", "samples", "items")


def _merge(into: dict, out: dict) -> None:
    """Fold one few-shot group's lm-eval output into `into`: per-task tables merged, the rest (the harness's
    environment report, git hash, date, tokenizer details) kept from the first group; `config` is the caller's."""
    for key, value in out.items():
        if key in PER_TASK_KEYS:
            into.setdefault(key, {}).update(value)
        elif key != "config":
            into.setdefault(key, value)


def _check_data(manager, tasks: list[str]) -> None:
    """Load each task's data now, so that missing datasets are one clear error naming every one and how to fetch it."""
    try:
        load_tasks(manager, tasks)
    except TaskError as e:
        raise EvalError(str(e)) from None


def run_tasks(lm, tasks: str, num_fewshot: int | None = None, limit: int | float | None = None,
              include_path: str | None = None, log_samples: bool = False, verbose: bool = False
              ) -> tuple[dict[str, Any], list]:
    """lm-eval's merged results of `tasks` on an lm-eval LM, and the (task, few-shot) list that ran; the harness's
    warnings and progress bars only when `verbose`."""
    go_offline_unless_hub_reachable()
    from lm_eval import simple_evaluate
    wanted = expand_tasks(tasks, num_fewshot)
    merged: dict[str, Any] = {}
    with _harness_quiet(not verbose):
        manager = known_tasks_manager([t for t, _ in wanted], include_path)
        for shots in dict.fromkeys(s for _, s in wanted):
            group = [t for t, s in wanted if s == shots]
            kept = _KeepsTasks(manager)
            try:
                with _harness_work_done_once():
                    out = simple_evaluate(model=lm, tasks=group, num_fewshot=shots, limit=limit,
                                          log_samples=log_samples, task_manager=kept,
                                          batch_size=getattr(lm, "batch_size", None), bootstrap_iters=1000)
                    add_item_scores(out, score_tasks(kept.tasks))  # in here: golds rendered by compiled templates
            except Exception:
                # Loaded only on failure (the harness loads each task's data itself): missing datasets, of this
                # group and the others, become one error naming each; any other failure is raised as it was.
                _check_data(manager, [t for t, _ in wanted])
                raise
            _merge(merged, out)
    return merged, wanted


class _KeepsTasks:
    """A task manager that keeps the tasks its `load` built for the harness: the harness leaves each document's
    requests and answers on them, which is where every item's scores are read (`model.eval.item_scores`)."""

    def __init__(self, manager):
        self._manager, self.tasks = manager, {}

    def load(self, *args, **kwargs):
        loaded = self._manager.load(*args, **kwargs)
        self.tasks.update(loaded["tasks"])
        return loaded

    def __getattr__(self, name):
        return getattr(self._manager, name)


@functools.lru_cache(maxsize=1)
def _environment() -> dict[str, Any]:
    from lm_eval.loggers.utils import add_env_info
    info: dict[str, Any] = {}
    add_env_info(info)
    return info


@contextlib.contextmanager
def _harness_work_done_once():
    """Two pieces of the harness's fixed work, done once per process instead of on every use; the output is the same.

    - The environment report in every results dict: the harness gathers it on every `simple_evaluate` call with
      torch's collect_env, which runs subprocesses (about 0.4 s each time, paid again by each few-shot group of a
      set and by each evaluation during training). The environment does not change within a process.
    - The task's Jinja templates (doc_to_text, doc_to_choice, doc_to_target): the harness compiles the template
      string again for every document it renders (`Environment.from_string` keeps no cache), about 0.3 ms each,
      three or more times per document. Compiled once here, they render the same text.
    """
    import lm_eval.evaluator as evaluator
    original = evaluator.add_env_info
    evaluator.add_env_info = lambda storage: storage.update(_environment())
    try:
        with templates_compiled_once():
            yield
    finally:
        evaluator.add_env_info = original


QUIET = "TQDM_DISABLE"  # set while the harness is quiet; OpenELMLM reads it for its "Tokenizing inputs" bar


@contextlib.contextmanager
def _harness_quiet(quiet: bool):
    """The harness without its noise: its notes on every metric a task YAML leaves at the default aggregation
    (logged as warnings), the progress bars of building requests, loading data and tokenizing, and git's "fatal:
    not a git repository" when the harness asks for a commit outside a checkout. Errors still show."""
    if not quiet:
        yield
        return
    import lm_eval.api.task as harness_task
    import lm_eval.evaluator as evaluator
    bars, commit, task_bar = os.environ.get(QUIET), evaluator.get_git_commit_hash, harness_task.tqdm
    os.environ[QUIET] = "1"
    evaluator.get_git_commit_hash = _git_commit
    # tqdm reads TQDM_DISABLE once, when imported; the harness's request-building bar has no switch of its own
    harness_task.tqdm = functools.partial(task_bar, disable=True)
    try:
        with quiet_loading():  # the metric notes and the data-loading bars
            yield
    finally:
        evaluator.get_git_commit_hash, harness_task.tqdm = commit, task_bar
        if bars is None:
            os.environ.pop(QUIET, None)
        else:
            os.environ[QUIET] = bars


def _git_commit() -> str | None:
    """The commit the harness records (as it does: `git describe --always` in the working folder), git's complaint
    outside a checkout discarded."""
    try:
        return subprocess.run(["git", "describe", "--always"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        from lm_eval.loggers.utils import get_commit_from_path
        return get_commit_from_path(os.getcwd())  # the harness's own fallback


def known_tasks_manager(tasks: list[str], include_path: str | None):
    """The task manager that knows every one of `tasks`; an unknown name is refused with where it was looked for."""
    try:
        return _known_tasks_manager(tasks, include_path)
    except TaskError as e:
        raise EvalError(str(e)) from None


def task_scores(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} from lm-eval's results (the `,none` filter's numbers, stderr left out)."""
    out = {}
    for task, row in results.get("results", {}).items():
        out[task] = {key.split(",")[0]: value for key, value in row.items()
                     if key.endswith(",none") and "_stderr" not in key and isinstance(value, (int, float))}
    return out


EVALS_DIR = "evals"  # in a run folder: what `elm-train eval` found for its checkpoints, read by `elm-train compare`


def record_in_run(evaluation: Evaluation) -> Path | None:
    """Keep an evaluation of a run's checkpoint in the run (`evals/step_N.json`, an `eval` record as training writes
    to metrics.jsonl, with the `items` of multiple-choice tasks and eval's `contamination` where it found one), so
    `elm-train compare` shows it; None for a model that is not a run's checkpoint."""
    source = evaluation.source
    if source.run_dir is None or source.step is None:
        return None
    record = {"kind": "eval", "step": source.step, "tokens": source.state.get("tokens_seen"),
              "tasks": task_scores(evaluation.results), "config": evaluation.results.get("config", {}),
              "n-shot": evaluation.results.get("n-shot", {}), "recorded_at": utc_now()}
    for key in ("items", "contamination"):  # each item's scores, for bootstraps; what the run's corpus held
        if key in evaluation.results:
            record[key] = evaluation.results[key]
    path = source.run_dir / EVALS_DIR / f"step_{source.step:08d}.json"
    path.parent.mkdir(exist_ok=True)
    atomic_write_json(path, record)
    return path


def training_evaluator(tokenizer_spec: str, tokenizer_sha256: str, tasks: str, limit: int | None,
                       include_path: str | None, batch_size: int):
    """A `model -> {task: {metric: value}}` callable for the trainer; checks the tasks and their data now.

    Task names and datasets are checked when the run starts, so a typo or a missing dataset stops
    it before any training rather than at its first evaluation.
    """
    from corpus.tokenizer.tokenizer import Tokenizer

    from model.eval.lm import OpenELMLM
    tokenizer = Tokenizer(tokenizer_spec)
    if tokenizer.sha256 != tokenizer_sha256:
        raise EvalError(f"--eval-tasks: the tokenizer {tokenizer_spec} is not the one the corpus was built with")
    go_offline_unless_hub_reachable()
    names = task_names(tasks)
    try:
        _check_data(known_tasks_manager(names, include_path), names)
    except EvalError as e:
        raise EvalError(f"--eval-tasks: {e}") from None

    def evaluate_model(model) -> dict[str, dict[str, float]]:
        lm = OpenELMLM(model, tokenizer, batch_size=batch_size)
        results, _ = run_tasks(lm, tasks, limit=limit, include_path=include_path)
        return task_scores(results)
    return evaluate_model


def task_evaluator(cfg: TrainConfig, data: TrainingData, cluster: Cluster):
    """The benchmark tasks a pretraining or fine-tuning run evaluates (`--eval-tasks`), checked now; None without."""
    from model.train.config import ConfigError, TrainError
    if not cfg.eval_tasks:
        return None
    if cfg.fsdp and cluster.distributed:
        raise ConfigError("--eval-tasks runs on rank 0's whole model; with --fsdp the model is sharded (not yet)")
    try:
        return training_evaluator(data.tokenizer["spec"], data.tokenizer["sha256"], cfg.eval_tasks,
                                  cfg.eval_tasks_limit, cfg.eval_tasks_include, cfg.micro_batch_size)
    except EvalError as e:
        raise TrainError(str(e)) from None
