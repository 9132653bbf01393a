"""elm-train: CoreNet's recipe, run folders, checkpoints, refusals, and the loss falling on real text."""
from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from model.cli import cli_plot, cli_train
from model.openelm import OpenELM
from model.presets import get_preset
from model.train import checkpoint as ckpt
from model.train.config import ConfigError, resolve_config
from model.train.loss import language_model_loss
from model.train.metrics import read_metrics
from model.train.optim import learning_rate, parameter_groups

REPO = Path(__file__).resolve().parent.parent

# A few CPU-cheap steps of `tiny` on short sequences.
QUICK = ["--model", "tiny", "--sequence-length", "32", "--micro-batch-size", "4", "--global-batch-tokens", "128",
         "--threads", "1", "--no-progress"]


def train_losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]


# ---------------------------------------------------------------- the recipe

def test_learning_rate_warms_up_linearly_from_1e_6_then_decays_by_cosine_to_a_tenth():
    cfg = resolve_config({}, {"model": "openelm-270m"})
    assert (cfg.steps, cfg.warmup_steps, cfg.max_lr) == (350_000, 5000, 5.3e-3)
    assert learning_rate(0, cfg) == pytest.approx(1e-6)
    assert learning_rate(2500, cfg) == pytest.approx(1e-6 + (5.3e-3 - 1e-6) / 2)
    assert learning_rate(5000, cfg) == pytest.approx(5.3e-3)
    halfway = 5000 + (350_000 - 5000) // 2
    assert learning_rate(halfway, cfg) == pytest.approx((5.3e-3 + 5.3e-4) / 2, rel=1e-6)
    assert learning_rate(350_000, cfg) == pytest.approx(5.3e-4)
    assert all(learning_rate(s, cfg) >= learning_rate(s + 997, cfg) for s in range(5000, 349_000, 997))


def test_a_short_run_warms_up_over_a_tenth_of_its_steps_unless_told_otherwise():
    assert resolve_config({}, {"model": "openelm-270m", "steps": 300}).warmup_steps == 30
    assert resolve_config({}, {"model": "openelm-270m", "steps": 300, "warmup_steps": 7}).warmup_steps == 7


@pytest.mark.parametrize("preset, max_lr", [("openelm-270m", 5.3e-3), ("openelm-450m", 3.9e-3),
                                            ("openelm-1.1b", 2.4e-3), ("openelm-3b", 1.2e-3)])
def test_each_released_size_gets_corenets_peak_learning_rate_and_batch(preset, max_lr):
    cfg = resolve_config({}, {"model": preset}, world_size=8)
    assert (cfg.max_lr, cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay) == (max_lr, 0.9, 0.95, 1e-8, 0.1)
    assert (cfg.grad_clip, cfg.z_loss, cfg.min_lr_ratio, cfg.warmup_init_lr) == (1.0, 1e-4, 0.1, 1e-6)
    assert cfg.global_batch_tokens == 2048 * 2048 and cfg.sequence_length == 2048
    assert cfg.gradient_accumulation * cfg.micro_batch_size * 8 == 2048
    assert cfg.activation_checkpointing == (preset != "openelm-270m")
    assert cfg.fsdp == (preset == "openelm-3b")


def test_norms_escape_weight_decay_while_embeddings_and_linears_get_it():
    model = OpenELM(get_preset("tiny"))
    decay, no_decay = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {names[id(p)] for p in no_decay["params"]} == {n for n, p in model.named_parameters() if p.ndim == 1}
    assert all(n.endswith("norm.weight") for n in (names[id(p)] for p in no_decay["params"]))
    assert "transformer.token_embeddings.weight" in {names[id(p)] for p in decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loss_is_cross_entropy_plus_z_loss_over_unpadded_targets_with_matching_gradients(dtype):
    torch.manual_seed(0)
    logits = (torch.randn(6, 10, 50) * 4).to(dtype).requires_grad_()
    targets = torch.randint(0, 50, (6, 10))
    targets[:, 7:] = -100  # padding at the end of each row, as the sampler's corenet mode labels it
    sums = language_model_loss(logits, targets, z_loss=1e-2)
    (sums.total / sums.tokens).backward()

    reference = logits.detach().float().reshape(-1, 50).requires_grad_()
    flat = targets.reshape(-1)
    ce = torch.nn.functional.cross_entropy(reference, flat, ignore_index=-100, reduction="sum")
    z = (torch.logsumexp(reference, -1).square() * (flat != -100)).sum()
    ((ce + 1e-2 * z) / 42).backward()
    ce, z = ce.detach(), z.detach()

    assert sums.tokens == 42
    assert float(sums.loss) == pytest.approx(float(ce), rel=1e-5)
    assert float(sums.z) == pytest.approx(float(z), rel=1e-5)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(logits.grad.float().reshape(-1, 50), reference.grad, atol=tolerance, rtol=tolerance)


def test_settings_layer_preset_then_yaml_then_flags():
    cfg = resolve_config({"max_lr": 2e-3, "steps": 50, "seed": 4}, {"steps": 80})
    assert (cfg.model, cfg.max_lr, cfg.steps, cfg.seed) == ("tiny", 2e-3, 80, 4)
    assert cfg.sequence_length == 128  # the tiny preset's own default


def test_an_unknown_setting_or_an_indivisible_batch_is_refused_by_name():
    with pytest.raises(ConfigError, match="unknown setting 'max_learning_rate'"):
        resolve_config({"max_learning_rate": 1.0}, {})
    with pytest.raises(ConfigError, match="global_batch_tokens 1000 is not a multiple"):
        resolve_config({}, {"global_batch_tokens": 1000, "sequence_length": 64, "micro_batch_size": 2})


# ---------------------------------------------------------------- checkpoints

def _dummy_state(size: int = 8) -> dict:
    return {"w": torch.arange(size, dtype=torch.float32)}


def test_only_the_newest_k_checkpoints_are_kept(tmp_path):
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, step, _dummy_state(), {"model_type": "openelm"}, {"step": step}, {}, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [3, 4]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000003", "step_00000004"]


# Saves checkpoint 2 with a trainer state whose pickling stalls, so the kill lands mid-write.
_STALLED_SAVE = """
import sys, time, torch
from model.train import checkpoint as ckpt

class Stall:
    def __reduce__(self):
        print("writing trainer_state.pt", flush=True)
        time.sleep(600)
        return (int, ())

ckpt.save_checkpoint(sys.argv[1], 2, {"w": torch.ones(1 << 20)}, {}, {"stall": Stall()}, {}, keep=5)
"""


def test_a_save_killed_half_way_leaves_the_previous_checkpoint_whole(tmp_path):
    ckpt.save_checkpoint(tmp_path, 1, _dummy_state(), {"model_type": "openelm"}, {"step": 1}, {"loss": 1.5}, keep=5)
    proc = subprocess.Popen([sys.executable, "-c", _STALLED_SAVE, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"writing trainer_state.pt"
    assert len(list((tmp_path / "checkpoints").glob(".tmp-step_00000002-*/model.safetensors"))) == 1
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [1]
    model_state, trainer_state, state = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))
    assert torch.equal(model_state["w"], _dummy_state()["w"]) and trainer_state == {"step": 1}
    assert state.pop("files").keys() == {"config.json", "model.safetensors", "trainer_state.pt"}
    assert state == {"step": 1, "loss": 1.5} and ckpt.damage(ckpt.latest_checkpoint(tmp_path)) is None
    ckpt.remove_stale_temporaries(tmp_path)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000001"]


# ---------------------------------------------------------------- refusals before training

def test_a_damaged_corpus_is_refused_in_one_line_that_names_the_shard_and_elm_corpus_verify(token_corpus, tmp_path,
                                                                                           capsys):
    import shutil
    corpus = shutil.copytree(token_corpus, tmp_path / "corpus")
    shard = sorted((corpus / "shards").rglob("*.bin"))[0]
    shard.write_bytes(shard.read_bytes()[:-1])  # cut short: an odd byte count is no whole number of tokens
    assert cli_train(["--corpus", str(corpus), "--out", str(tmp_path / "run"), *QUICK, "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(shard) in err and f"run 'elm-corpus verify {corpus}'" in err


def test_a_missing_corpus_is_refused_with_the_command_that_builds_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ELM_CORPUS_DATA", str(tmp_path / "data"))
    assert cli_train(["--corpus", "openelm-sample", "--out", str(tmp_path / "run"), *QUICK]) == 2
    err = capsys.readouterr().err
    assert "corpus 'openelm-sample' not found" in err
    assert "elm-corpus build manifests/openelm.yaml --sample" in err
    assert not (tmp_path / "run").exists()


def test_a_corpus_whose_tokenizer_does_not_fit_the_vocabulary_is_refused(token_corpus, tmp_path, capsys):
    assert cli_train(["--corpus", str(token_corpus), "--out", str(tmp_path / "run"), *QUICK,
                      "--vocab-size", "1000"]) == 2
    err = capsys.readouterr().err
    assert "(32000 pieces)" in err and "vocabulary of 1000" in err and "--vocab-size 32000" in err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- one short run, examined

RUN_STEPS = 40


@pytest.fixture(scope="module")
def finished_run(token_corpus, tmp_path_factory):
    """40 steps of `tiny` on 512-token batches of real text; settings from a YAML run config plus flags."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    config = run.parent / "run.yaml"
    config.write_text(yaml.safe_dump({"steps": RUN_STEPS, "max_lr": 1e-2, "eval_every": 20, "eval_batches": 4,
                                      "checkpoint_every": 20, "keep_checkpoints": 1, "log_every": 10}))
    assert cli_train(["--corpus", str(token_corpus), "--out", str(run), "--config", str(config), "--model", "tiny",
                      "--sequence-length", "64", "--micro-batch-size", "8", "--global-batch-tokens", "512",
                      "--threads", "2", "--no-progress"]) == 0
    return run


def test_tiny_training_and_validation_loss_fall_clearly_from_ln_vocab(finished_run):
    train = train_losses(finished_run)
    val = [r["val_loss"] for r in read_metrics(finished_run / "metrics.jsonl") if r["kind"] == "val"]
    assert train[0] > 10.0  # about ln(32000) = 10.37 at initialisation
    assert sum(train[-5:]) / 5 < 7.5
    assert len(val) == 2 and val[1] < val[0] < 7.5


def test_a_run_folder_holds_provenance_resolved_config_metrics_checkpoints_and_curves(finished_run, token_corpus):
    run = finished_run
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["steps"], saved["max_lr"], saved["sequence_length"], saved["warmup_steps"]) == (40, 1e-2, 64, 4)
    assert (saved["gradient_accumulation"], saved["z_loss"], saved["weight_decay"]) == (1, 1e-4, 0.1)
    info = json.loads((run / "run.json").read_text())
    corpus = json.loads((token_corpus / "corpus.json").read_text())
    assert info["corpus"] == {"name": "trainer-test", "dir": str(token_corpus.resolve()),
                              "fingerprint": corpus["manifest_fingerprint"]}
    assert info["tokenizer"]["sha256"] == corpus["tokenizer"]["sha256"] and info["preset"] == "tiny"
    assert info["status"] == "complete" and info["steps_done"] == RUN_STEPS
    assert info["tokens_seen"] == RUN_STEPS * 512
    records = read_metrics(run / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, RUN_STEPS + 1))
    assert info["final_train_loss"] == train[-1]["loss"]
    assert [r["step"] for r in records if r["kind"] == "val"] == [20, 40]
    assert [r["lr"] for r in train[:2]] == [1e-6, pytest.approx(1e-6 + (1e-2 - 1e-6) / 4)]
    mixture = [r for r in records if r["kind"] == "mixture"][-1]["sources"]
    assert set(mixture) == {"kjv", "stdlib", "pydoc"}
    assert sum(row["achieved"] for row in mixture.values()) == pytest.approx(1.0)
    assert all(abs(row["achieved"] - row["target"]) < 0.05 for row in mixture.values())

    assert [s for s, _ in ckpt.list_checkpoints(run)] == [RUN_STEPS]
    step_dir = ckpt.checkpoint_dir(run, RUN_STEPS)
    assert json.loads((step_dir / "config.json").read_text()) == get_preset("tiny").to_hf_config()
    from model.hf_folder import load_hf_folder
    _, exported = load_hf_folder(step_dir)  # the export side reads a checkpoint as an HF folder
    assert exported.transformer.token_embeddings.weight.dtype == torch.float32
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_draws_the_curves_of_a_run_folder(finished_run, tmp_path, capsys):
    assert cli_plot([str(finished_run), "--out", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert cli_plot([str(tmp_path / "nowhere")]) == 2
    assert "no training records" in capsys.readouterr().err


def test_starting_over_an_existing_run_without_resume_is_refused(finished_run, token_corpus, capsys):
    assert cli_train(["--corpus", str(token_corpus), "--out", str(finished_run), *QUICK]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert len(train_losses(finished_run)) == RUN_STEPS


def test_resume_with_nothing_to_resume_starts_a_new_run(token_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli_train(["--corpus", str(token_corpus), "--out", str(run), *QUICK, "--steps", "1", "--resume"]) == 0
    assert "nothing to resume" in capsys.readouterr().err
    assert len(train_losses(run)) == 1 and json.loads((run / "run.json").read_text())["resumed_from"] == []


def test_init_from_starts_from_a_checkpoints_weights(finished_run, token_corpus, tmp_path):
    start = ckpt.checkpoint_dir(finished_run, RUN_STEPS)
    run = tmp_path / "finetune"
    # A learning rate of 1e-30 leaves float32 weights unchanged: the saved model must be the starting one.
    assert cli_train(["--corpus", str(token_corpus), "--out", str(run), *QUICK, "--steps", "1",
                      "--max-lr", "1e-30", "--warmup-init-lr", "1e-30", "--init-from", str(start)]) == 0
    before, _, _ = ckpt.load_checkpoint(start)
    after, _, _ = ckpt.load_checkpoint(ckpt.checkpoint_dir(run, 1))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert train_losses(run)[0] < 8.0  # a fresh model starts near 10.9
    assert json.loads((run / "run.json").read_text())["init_from"] == str(start)


def test_activation_checkpointing_changes_memory_not_results(token_corpus, tmp_path):
    plain, recomputed = tmp_path / "plain", tmp_path / "recomputed"
    assert cli_train(["--corpus", str(token_corpus), "--out", str(plain), *QUICK, "--steps", "2"]) == 0
    assert cli_train(["--corpus", str(token_corpus), "--out", str(recomputed), *QUICK, "--steps", "2",
                      "--activation-checkpointing"]) == 0
    assert train_losses(recomputed) == train_losses(plain)


def test_every_train_record_says_how_long_its_step_waited_for_data(token_corpus, tmp_path):
    run = tmp_path / "run"
    assert cli_train(["--corpus", str(token_corpus), "--out", str(run), *QUICK, "--steps", "3"]) == 0
    train = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]
    assert len(train) == 3 and all(0 <= r["data_wait_s"] <= r["step_s"] for r in train)


class SlowBatches:
    """A batch source whose every micro-batch takes `delay` seconds to arrive: a pipeline slower than the model."""

    def __init__(self, batches, delay: float):
        self.batches, self.delay = batches, delay

    def next(self):
        time.sleep(self.delay)
        return self.batches.next()

    def __getattr__(self, name):
        return getattr(self.batches, name)


def test_a_slow_data_source_shows_as_data_wait_in_metrics_and_the_progress_line(token_corpus, tmp_path, monkeypatch,
                                                                                capsys):
    from model.train.data import TrainingData
    plain = TrainingData.train_batches
    monkeypatch.setattr(TrainingData, "train_batches", lambda self, cfg, cluster: SlowBatches(plain(self, cfg, cluster), 0.2))
    run = tmp_path / "run"
    # two micro-batches a step: each step waits at least 0.4 s
    args = [a for a in QUICK if a != "--no-progress"]
    assert cli_train(["--corpus", str(token_corpus), "--out", str(run), *args, "--global-batch-tokens", "256",
                      "--steps", "2", "--log-every", "1"]) == 0
    train = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]
    assert len(train) == 2 and all(0.4 <= r["data_wait_s"] <= r["step_s"] for r in train)
    waits = [float(w) for w in re.findall(r"data wait (\d+\.\d\d)s \(\d+%\)", capsys.readouterr().err)]
    assert len(waits) == 2 and all(w >= 0.4 for w in waits)

def test_corenet_mode_trains_on_padded_chunks_and_counts_only_real_targets(token_corpus, tmp_path):
    run = tmp_path / "run"
    assert cli_train(["--corpus", str(token_corpus), "--out", str(run), *QUICK, "--steps", "2",
                      "--sequence-length", "1024", "--micro-batch-size", "2", "--global-batch-tokens", "2048",
                      "--sampler-mode", "corenet", "--threads", "2"]) == 0
    train = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]
    # Chunks shorter than 1025 tokens are padded; their padding is no target.
    assert 0 < train[-1]["tokens"] < 2 * 2048
    assert all(math.isfinite(r["loss"]) for r in train)


def test_a_diverging_loss_stops_training_and_keeps_the_last_good_checkpoint(token_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    # A learning rate of 1e30 blows the weights up after the first update.
    code = cli_train(["--corpus", str(token_corpus), "--out", str(run), *QUICK, "--steps", "6",
                      "--max-lr", "1e30", "--warmup-steps", "0", "--checkpoint-every", "1"])
    err = capsys.readouterr().err
    assert code == 3
    good = ckpt.list_checkpoints(run)
    assert [s for s, _ in good] == [1]
    assert "step 2: the gradient norm is nan" in err or "step 2: the loss is nan" in err or "is inf" in err
    assert f"last good checkpoint is {good[-1][1]}" in err
    assert all(math.isfinite(l) for l in train_losses(run))
    assert json.loads((run / "run.json").read_text())["status"] == "stopped: non-finite loss"
    for _, path in good:
        model_state, _, _ = ckpt.load_checkpoint(path)
        assert all(torch.isfinite(t).all() for t in model_state.values())


def test_stream_trains_from_the_live_pipeline_of_the_sample_mirror(sample_mirror, ray_session, tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "sample").symlink_to(sample_mirror)  # where the live pipeline looks for the mirror
    monkeypatch.setenv("ELM_CORPUS_DATA", str(data))
    run = tmp_path / "run"
    assert cli_train(["--stream", "--stream-sample", "--weights", "dolma-wiki=1", "--out", str(run), *QUICK,
                      "--steps", "2", "--manifest", str(REPO / "manifests" / "openelm.yaml")]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["corpus"]["name"] == "openelm-sample" and info["corpus"]["dir"] is None
    assert len(train_losses(run)) == 2 and all(math.isfinite(l) for l in train_losses(run))
    mixture = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "mixture"][-1]["sources"]
    assert mixture["dolma-wiki"]["achieved"] == 1.0


class RecordedBatches(SlowBatches):
    """A batch source that keeps the inputs of every micro-batch it hands out."""

    def __init__(self, batches, seen: list):
        super().__init__(batches, 0.0)
        self.seen = seen

    def next(self):
        batch = self.batches.next()
        self.seen.extend(batch[0].cpu().numpy().astype(np.uint16))
        return batch


def occurs_in(row: np.ndarray, tokens: bytes) -> bool:
    """Whether the token ids of `row` occur in order, contiguously, in the uint16 bytes `tokens`."""
    needle, at = row.tobytes(), tokens.find(row.tobytes())
    while at >= 0 and at % 2:
        at = tokens.find(needle, at + 1)
    return at >= 0


def test_streaming_validates_on_held_out_units_never_trained_on_the_same_in_every_run(sample_mirror, ray_session,
                                                                                      tmp_path, monkeypatch):
    from model.train.data import TrainingData
    from stream_chunks import stream_chunks
    data = tmp_path / "data"
    data.mkdir()
    (data / "sample").symlink_to(sample_mirror)
    monkeypatch.setenv("ELM_CORPUS_DATA", str(data))
    trained, held_out = [], []
    train_batches, held_out_batches = TrainingData.train_batches, TrainingData.held_out
    monkeypatch.setattr(TrainingData, "train_batches",
                        lambda self, cfg, cluster: RecordedBatches(train_batches(self, cfg, cluster), trained))

    def recorded_held_out(self, cfg, cluster):
        batches, why_none = held_out_batches(self, cfg, cluster)
        held_out.append([b[0].cpu().numpy().astype(np.uint16) for b in batches])
        return batches, why_none
    monkeypatch.setattr(TrainingData, "held_out", recorded_held_out)

    def train(run, *more):
        assert cli_train(["--stream", "--stream-sample", "--weights", "dolma-wiki=1", "--out", str(run), *QUICK,
                          "--eval-every", "1", "--eval-batches", "2", "--checkpoint-every", "1",
                          "--manifest", str(REPO / "manifests" / "openelm.yaml"), *more]) == 0
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    train(whole, "--steps", "2")
    train(resumed, "--steps", "1")
    train(resumed, "--steps", "2", "--resume")

    val = [r for r in read_metrics(whole / "metrics.jsonl") if r["kind"] == "val"]
    assert [r["step"] for r in val] == [1, 2] and all(math.isfinite(r["val_loss"]) for r in val)
    # the held-out batches: the same in a second run and after a resume, and all from the held-out unit
    assert len(held_out) == 3 and len(held_out[0]) == 2
    assert all(np.array_equal(a, b) for other in held_out[1:] for a, b in zip(held_out[0], other))
    chunks = {split: [c.tobytes() for c in stream_chunks(REPO / "manifests" / "openelm.yaml", "dolma-wiki", sample=True,
                                                         workers=2, split=split, val_fraction=0.001,
                                                         mirror_root=str(sample_mirror))]
              for split in ("train", "val")}
    val_tokens = b"".join(chunks["val"])
    assert all(occurs_in(row, val_tokens) for batch in held_out[0] for row in batch)
    # no sequence trained on comes from the held-out unit (documents the mirror repeats in both splits aside)
    val_only = b"".join(c for c in chunks["val"] if c not in set(chunks["train"]))
    assert len(trained) == 2 * 4 + 4 * 2 and not any(occurs_in(row, val_only) for row in trained)


def test_a_source_too_small_to_hold_out_a_unit_is_left_out_of_streamed_validation(sample_mirror, tmp_path,
                                                                                  monkeypatch):
    from model.train.data import resolve_stream
    data = tmp_path / "data"
    data.mkdir()
    (data / "sample").symlink_to(sample_mirror)
    monkeypatch.setenv("ELM_CORPUS_DATA", str(data))
    cfg = resolve_config({}, {"model": "tiny", "stream": True, "stream_sample": True,
                              "manifest": str(REPO / "manifests" / "openelm.yaml"),
                              "weights": {"dolma-wiki": 1.0, "redpajama-books": 3.0}})
    # redpajama-books is one unit on the sample mirror: nothing of it can be held out
    assert resolve_stream(cfg)._held_out_weights(cfg.weights) == {"dolma-wiki": 1.0, "redpajama-books": 0.0}


def test_a_stream_unit_that_fails_for_good_stops_training_by_name_and_resume_goes_on_once_fixed(
        sample_mirror, ray_session, tmp_path, capsys):
    from corpus.manifest import load_manifest
    from corpus.mixing.sampler import DEFAULT_VAL_FRACTION
    from pipelines.stream import stream_units
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for f in sorted((sample_mirror / "dolma-wiki").glob("*.json.gz")):
        (inputs / f.name).write_bytes(f.read_bytes())
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"name: m\nsources:\n  - name: wiki\n    group: dolma\n"
                        f"    upstream: {{files: [\"{inputs}/*.json.gz\"]}}\n    format: json.gz\n    tokens: 1M\n")
    # the held-out unit is first read at the first validation (step 2), after the checkpoint of step 1
    (unit,) = stream_units(load_manifest(manifest), "wiki", split="val", val_fraction=DEFAULT_VAL_FRACTION)
    broken = Path(unit.slice.uri.removeprefix("file://"))
    good = broken.read_bytes()
    broken.write_bytes(good[:200] + bytes(len(good) - 200))  # corrupt past its gzip header

    run = tmp_path / "run"
    args = ["--stream", "--manifest", str(manifest), "--weights", "wiki=1", "--out", str(run), *QUICK,
            "--steps", "3", "--eval-every", "2", "--checkpoint-every", "1"]
    capsys.readouterr()
    assert cli_train(args) == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and message.startswith("elm-train: the live pipeline stopped: source wiki, ")
    assert f"unit {unit.key}, input {unit.slice.describe()}: " in message and "--resume" in message
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "stopped: stream unit failed" and unit.key in info["error"]
    assert ckpt.latest_checkpoint(run).name == "step_00000001"

    broken.write_bytes(good)
    assert cli_train([*args, "--resume"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["steps_done"] == 3 and info["resumed_from"] == ["step_00000001"]
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "val"] == [2, 3]
