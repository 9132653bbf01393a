"""The training loop as a `Trainer`: `train()` steps, logs, validates and checkpoints; the work is in its methods.

`train_step` runs one optimizer step (the step's LR, forward/backward over the global batch's
micro-batches with gradients synchronised on the last, clipping, a stop on a non-finite loss,
the update); `validate` evaluates the held-out batches; `save_checkpoint` and `resume` move
the whole state (model, optimizer, data position, RNGs) to and from `checkpoints/step_N/`.

What to train is given, not built here: the model (any module with OpenELM's `config`; one
with adapters for fine-tuning), the data (`model.train.data.DataSource`: training batches
whose position is checkpointed, which may also report the mixture they draw (`MixtureReport`),
and held-out batches), the loss (`loss_fn(logits, targets,
*extras) -> LossSums`, by default cross entropy + z-loss) with what it is averaged over
(`count_fn(batch)`, by default the target tokens), and how weights go to and from a
checkpoint (`weights`, by default the model's own state). `model.pretrain` assembles
the pretraining run from a `TrainConfig`; `model.finetune` a fine-tuning run.
"""
from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn

from corpus.store.files import utc_now
from model.train import checkpoint as ckpt
from model.train.config import TrainConfig, TrainError
from model.train.data import IGNORE_INDEX, Batch, DataSource, DataStopped, MixtureReport
from model.train.distributed import Cluster, autocast_dtype, full_state, load_full_state, wrap_model
from model.train.loss import LossSums, language_model_loss
from model.train.metrics import METRICS_FILE, MetricsLog, ProgressBar, plot_run
from model.train.optim import build_optimizer, learning_rate, set_learning_rate
from model.train.run import CONFIG_YAML, RunRecord

LossFn = Callable[..., LossSums]  # (logits, targets, *the batch's extra tensors) -> sums over what counts
CountFn = Callable[[Batch], int]  # what a micro-batch's loss sum is averaged over (default: its target tokens)
TaskEval = Callable[[nn.Module], dict]  # model -> {task: {metric: value}} (benchmark tasks, e.g. lm-eval's)


class NonFiniteLoss(TrainError):
    """The loss or gradient norm became NaN or Inf; the last good checkpoint is kept."""


class CheckpointWeights(Protocol):
    """How a model's weights go into a checkpoint folder and come back (adapters: merged out, adapter files beside)."""

    def to_checkpoint(self, model: nn.Module) -> tuple[dict[str, Tensor], dict[str, bytes]]:
        """(the weights the folder holds in the model's Hugging Face layout, extra files by relative path)."""
        ...

    def from_checkpoint(self, model: nn.Module, folder: Path, saved: dict[str, Tensor]) -> dict[str, Tensor]:
        """The model's whole state dict, from the folder's weights `saved` and its extra files."""
        ...


@dataclass
class TrainState:
    """Where the run stands; a checkpoint records it."""
    step: int = 0
    tokens_seen: int = 0
    train_loss: float | None = None
    val_loss: float | None = None


@dataclass
class StepResult:
    loss: float          # mean cross entropy of the global batch
    z_loss: float        # mean logsumexp^2
    lr: float
    grad_norm: float     # before clipping
    tokens: int          # target tokens over all ranks
    tokens_per_s: float
    extras: dict[str, float] = field(default_factory=dict)  # the loss's other means (e.g. preference rewards)
    seconds: float = 0.0     # the whole step, wall clock
    data_wait_s: float = 0.0  # of which waiting for this rank's micro-batches (the pipeline as the bottleneck)


@dataclass
class TrainResult:
    run_dir: Path
    steps_done: int
    train_loss: float | None
    val_loss: float | None
    tokens_seen: int
    tokens_per_s: float
    mixture: dict = field(default_factory=dict)  # per source: target and achieved shares, as the data reports them


class Trainer:
    """One run's model, optimizer, data and records; `start()` then `train()`."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, cluster: Cluster, model: nn.Module, data: DataSource,
                 loss_fn: LossFn | None = None, task_eval: TaskEval | None = None, count_fn: CountFn | None = None,
                 weights: CheckpointWeights | None = None):
        self.cfg, self.run_dir, self.cluster, self.data = cfg, run_dir, cluster, data
        self.count_fn, self.weights = count_fn, weights
        self.model = model.to(cluster.device)
        self.train_model = wrap_model(self.model, cfg, cluster)
        # After wrapping: fully_shard swaps the parameters for sharded ones.
        self.optimizer = build_optimizer(self.model, cfg)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.amp = autocast_dtype(cfg, cluster.device)
        self.loss_fn = loss_fn or functools.partial(language_model_loss, z_loss=cfg.z_loss)
        self.task_eval = task_eval
        self.batches = data.train_batches(cfg, cluster)
        # pretraining's batches report the mixture they draw (and its live pipeline); fine-tuning's do not
        self.mixture = self.batches if isinstance(self.batches, MixtureReport) else None
        self.state = TrainState()
        self.metrics = MetricsLog(run_dir / METRICS_FILE, enabled=cluster.is_main)
        self.progress = ProgressBar(cfg.steps, 0, cfg.log_every, enabled=False)  # train() shows the real one
        self.record = RunRecord(run_dir, {}, enabled=False)  # start() opens run.json
        self._held_out: list[Batch] | None = None
        self._resumed: tuple[int, float] | None = None  # (step, seconds the checkpoint took to load) until recorded
        self.notes: list[str] = []  # what the run's assembly wants the user told before training (the CLI prints)

    def start(self, resume_from: Path | None = None, facts: dict[str, Any] | None = None,
              previous: dict[str, Any] | None = None) -> None:
        """Resume from `resume_from` if given, then open the run folder: config.yaml, metrics cut back to the
        step, run.json with `facts` (provenance) and the progress fields; `previous` is the run.json resumed."""
        previous = previous or {}
        if resume_from is not None:
            self.resume(resume_from)
        self.state.train_loss = previous.get("final_train_loss")
        if self.cluster.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.remove_stale_temporaries(self.run_dir)
            self.metrics.truncate_after(self.state.step)
            self.cfg.save_yaml(self.run_dir / CONFIG_YAML)
        self.record = RunRecord(self.run_dir, {
            **(facts or {}),
            "world_size": self.cluster.world_size, "device": str(self.cluster.device),
            "dtype": str(self.amp).replace("torch.", "") if self.amp else "float32",
            "torch_version": torch.__version__,
            "steps_planned": self.cfg.steps, "steps_done": self.state.step, "tokens_seen": self.state.tokens_seen,
            "final_train_loss": previous.get("final_train_loss"), "final_val_loss": previous.get("final_val_loss"),
            "started_at": previous.get("started_at", utc_now()), "ended_at": None, "status": "running",
            "resumed_from": previous.get("resumed_from", []) + ([resume_from.name] if resume_from else []),
        }, enabled=self.cluster.is_main)
        self.record.update()

    def train(self) -> TrainResult:
        """Step to `cfg.steps`: record every step, the mixture, validation and a checkpoint on their schedules."""
        cfg, state = self.cfg, self.state
        self.progress = ProgressBar(cfg.steps, state.step, cfg.log_every, enabled=cfg.progress and self.cluster.is_main)
        started = time.perf_counter()
        start_step, start_tokens = state.step, state.tokens_seen
        try:
            while state.step < cfg.steps:
                result = self.train_step()
                self.metrics.write({"kind": "train", "step": state.step, "loss": result.loss, "z_loss": result.z_loss,
                                    "lr": result.lr, "grad_norm": result.grad_norm, "tokens": state.tokens_seen,
                                    "tokens_per_s": result.tokens_per_s, "step_s": result.seconds,
                                    "data_wait_s": result.data_wait_s, "elapsed_s": time.perf_counter() - started,
                                    **result.extras})
                self.progress.update(state.step, result.loss, result.tokens_per_s, result.lr, result.data_wait_s,
                                     result.seconds)
                if self._resumed is not None:
                    self._record_resume(result)
                if self.mixture is not None and self._due(cfg.log_every):
                    self.metrics.write({"kind": "mixture", "step": state.step, "sources": self.mixture.shares()})
                    pipeline = self.mixture.pipeline()
                    if pipeline is not None:
                        self.metrics.write({"kind": "stream", "step": state.step, **pipeline})
                if self._due(cfg.eval_every):
                    self._after_last_step("final validation")
                    state.val_loss = self.validate()
                if self.task_eval is not None and self._due(cfg.eval_tasks_every):
                    self._after_last_step("final task evaluation")
                    self.evaluate_tasks()
                if self._due(cfg.checkpoint_every):
                    self._after_last_step("writing the final checkpoint")
                    self.save_checkpoint()
            self._after_last_step("drawing the curves")
        except DataStopped as stop:
            # raised while waiting for a batch, before any update: the last checkpoint is this run's last good state
            last = ckpt.latest_checkpoint(self.run_dir)
            self.record.update(status="stopped: stream unit failed", error=str(stop), ended_at=utc_now())
            where = last if last else "the start (no checkpoint was written yet)"
            raise DataStopped(f"{stop}; training stopped at step {state.step}. Fix the input, then rerun with "
                              f"--resume to continue from {where}") from stop
        except (NonFiniteLoss, KeyboardInterrupt) as stop:
            status = "stopped: non-finite loss" if isinstance(stop, NonFiniteLoss) else "interrupted"
            self.record.update(status=status, ended_at=utc_now())
            raise
        finally:
            self.progress.close()
            self.metrics.close()
            self.data.close()

        elapsed = time.perf_counter() - started
        rate = (state.tokens_seen - start_tokens) / elapsed if elapsed > 0 and state.step > start_step else 0.0
        self.record.update(status="complete", ended_at=utc_now(), steps_done=state.step, tokens_seen=state.tokens_seen,
                           final_train_loss=state.train_loss, final_val_loss=state.val_loss)
        if self.cluster.is_main:
            plot_run(self.run_dir)
        return TrainResult(self.run_dir, state.step, state.train_loss, state.val_loss, state.tokens_seen, rate,
                           self.mixture.shares() if self.mixture is not None else {})

    def _record_resume(self, first: StepResult) -> None:
        """The `resume` record: what the resume cost until its first step had its data (loading the checkpoint,
        then waiting for the batches), and how many input units the data reads again (a live pipeline's)."""
        step, load_seconds = self._resumed
        self._resumed = None
        reread = self.mixture.units_reread() if self.mixture is not None else 0
        self.metrics.write({"kind": "resume", "step": step, "units_reread": reread,
                            "seconds": load_seconds + first.data_wait_s})

    def _after_last_step(self, what: str) -> None:
        """Say on the progress line what the run does after its last step, until the summary."""
        if self.state.step == self.cfg.steps:
            self.progress.doing(self.state.step, what)

    def _due(self, every: int) -> bool:
        return self.state.step % every == 0 or self.state.step == self.cfg.steps

    def train_step(self) -> StepResult:
        """One optimizer step on the next global batch; stops before the update if the loss or norm is not finite."""
        started = time.perf_counter()
        lr = learning_rate(self.state.step, self.cfg)
        set_learning_rate(self.optimizer, lr)
        waiting = time.perf_counter()
        micro = [self.batches.next() for _ in range(self.cfg.gradient_accumulation)]
        data_wait = time.perf_counter() - waiting
        loss, z_loss, tokens, extras = self.forward_backward(micro)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip))
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            last_good = ckpt.latest_checkpoint(self.run_dir)
            what = (f"the loss is {loss}" if not math.isfinite(loss)
                    else f"the gradient norm is {grad_norm} (loss {loss:.4f})")
            raise NonFiniteLoss(
                f"step {self.state.step + 1}: {what} at lr {lr:.3g}; training stopped before applying this update. "
                f"The last good checkpoint is {last_good if last_good else 'none (none was written yet)'}; "
                f"lower --max-lr or lengthen --warmup-steps, then rerun with --resume")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.tokens_seen += tokens
        self.state.train_loss = loss
        seconds = time.perf_counter() - started
        return StepResult(loss, z_loss, lr, grad_norm, tokens, tokens / seconds if seconds > 0 else 0.0, extras,
                          seconds, data_wait)

    def forward_backward(self, micro: list[Batch]) -> tuple[float, float, int, dict[str, float]]:
        """Accumulate the gradient of one global batch; return its mean loss, mean lse^2, target tokens and the
        means of the loss's extras.

        Every micro-batch's summed loss is divided by the count (`count_fn`: target tokens, or pairs) of the
        whole global batch (all ranks), so any split into micro-batches and ranks gives the same gradient.
        """
        cluster, model = self.cluster, self.train_model
        local_tokens = sum(self._tokens(batch) for batch in micro)
        local_count = sum(self.count_fn(batch) for batch in micro) if self.count_fn else local_tokens
        global_tokens, global_count = cluster.sum([float(local_tokens), float(local_count)])
        global_count = max(global_count, 1.0)
        scale = cluster.world_size / global_count  # DDP and FSDP average gradients over ranks
        ce_sum = z_sum = torch.zeros((), dtype=torch.float64, device=cluster.device)
        extras: dict[str, float] = {}
        for i, (inputs, *rest) in enumerate(micro):
            sync = i == len(micro) - 1 or not hasattr(model, "no_sync")  # DDP reduces gradients on the last only
            with contextlib.nullcontext() if sync else model.no_sync():
                with self._autocast():
                    logits = model(inputs)
                sums = self.loss_fn(logits, *rest)
                (sums.total * scale).backward()
            ce_sum, z_sum = ce_sum + sums.loss, z_sum + sums.z
            for name, value in sums.extras.items():
                extras[name] = extras.get(name, 0.0) + float(value)
        totals = cluster.sum([float(ce_sum), float(z_sum), *extras.values()])
        means = {name: value / global_count for name, value in zip(extras, totals[2:])}
        return totals[0] / global_count, totals[1] / global_count, int(global_tokens), means

    @staticmethod
    def _tokens(batch: Batch) -> int:
        return int((batch[1] != IGNORE_INDEX).sum())

    def validate(self) -> float | None:
        """Mean cross entropy over the held-out batches of every rank (read once, the same each time); None without."""
        if self._held_out is None:
            self._held_out, why_none = self.data.held_out(self.cfg, self.cluster)
            if why_none:
                self.progress.note(why_none)
        if not self._held_out:
            return None
        self.train_model.eval()
        ce, count, extras = 0.0, 0, {}
        with torch.no_grad():
            for inputs, *rest in self._held_out:
                with self._autocast():
                    sums = self.loss_fn(self.train_model(inputs), *rest)
                ce += float(sums.loss)
                count += self.count_fn((inputs, *rest)) if self.count_fn else sums.tokens
                for name, value in sums.extras.items():
                    extras[name] = extras.get(name, 0.0) + float(value)
        self.train_model.train()
        ce, count, *totals = self.cluster.sum([ce, float(count), *extras.values()])
        val_loss = ce / count if count else float("nan")
        means = {f"val_{name}": value / count for name, value in zip(extras, totals)} if count else {}
        self.metrics.write({"kind": "val", "step": self.state.step, "val_loss": val_loss, "tokens": int(count),
                            **means})
        self.progress.note(f"step {self.state.step}: val_loss {val_loss:.4f}")
        return val_loss

    def evaluate_tasks(self) -> dict | None:
        """Run the benchmark tasks on rank 0 (the others wait) and record them; training's RNGs are left as they were."""
        scores = None
        if self.cluster.is_main:
            rng = ckpt.capture_rng_state()  # the harness seeds every RNG it knows
            started = time.perf_counter()
            try:
                scores = self.task_eval(self.model)
            finally:
                ckpt.restore_rng_state(rng)
                self.model.train()
            self.metrics.write({"kind": "eval", "step": self.state.step, "tokens": self.state.tokens_seen,
                                "seconds": time.perf_counter() - started, "tasks": scores})
            shown = ", ".join(f"{task} {100 * (m.get('acc_norm', m.get('acc')) or 0):.1f}" for task, m in scores.items())
            self.progress.note(f"step {self.state.step}: {shown}")
        if self.cluster.distributed:
            dist.barrier()
        return scores

    def _autocast(self):
        return torch.autocast(self.cluster.device.type, dtype=self.amp, enabled=self.amp is not None)

    def save_checkpoint(self) -> None:
        """Checkpoint this step (whole tensors, written by rank 0) and bring run.json up to date."""
        cfg, cluster, state = self.cfg, self.cluster, self.state
        model_state, optim_state = full_state(self.model, self.optimizer, cfg, cluster)
        extra_files: dict[str, bytes] = {}
        if self.weights is not None and cluster.is_main:
            model_state, extra_files = self.weights.to_checkpoint(self.model)
        data_state = self.batches.state_dict()
        rngs = cluster.gather(ckpt.capture_rng_state())
        if cluster.is_main:
            schedule = {"step": state.step, "warmup_steps": cfg.warmup_steps, "max_lr": cfg.max_lr, "steps": cfg.steps}
            trainer_state = {"optimizer": optim_state, "scheduler": schedule, "sampler": data_state, "rng": rngs,
                             "world_size": cluster.world_size}
            ckpt.save_checkpoint(self.run_dir, state.step, model_state, self.model.config.to_hf_config(), trainer_state,
                                 {"tokens_seen": state.tokens_seen, "train_loss": state.train_loss,
                                  "val_loss": state.val_loss, "saved_at": utc_now()}, cfg.keep_checkpoints,
                                 extra_files)
            self.record.update(steps_done=state.step, tokens_seen=state.tokens_seen, final_train_loss=state.train_loss,
                               final_val_loss=state.val_loss)
        if cluster.distributed:
            dist.barrier()

    def resume(self, checkpoint: Path) -> None:
        """Continue from a checkpoint: weights, optimizer, data position, this rank's RNGs, step and counters."""
        started = time.perf_counter()
        model_state, trainer_state, saved = ckpt.load_checkpoint(checkpoint)
        if self.weights is not None:
            model_state = self.weights.from_checkpoint(self.model, checkpoint, model_state)
        load_full_state(self.model, self.optimizer, model_state, trainer_state["optimizer"], self.cfg, self.cluster)
        # The data position is the global stream position, the same on every rank and for any world size.
        self.batches.load_state_dict(trainer_state["sampler"])
        rngs = trainer_state["rng"]
        ckpt.restore_rng_state(rngs[self.cluster.rank] if self.cluster.rank < len(rngs) else rngs[0])
        self.state = TrainState(int(saved["step"]), int(saved["tokens_seen"]), val_loss=saved.get("val_loss"))
        self._resumed = (self.state.step, time.perf_counter() - started)
