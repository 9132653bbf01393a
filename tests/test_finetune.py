"""`elm-train finetune`: SFT masking, LoRA/DoRA through PEFT, DPO and RSO, exact resume, on a small local model."""
from __future__ import annotations

import json
import re
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import shaped_random_state
from eval_data import write_model
from model.cli import main
from model.adapters.lora import ADAPTER_DIR, ADAPTER_WEIGHTS, AdapterSettings, add_adapters, merged_state
from model.finetune.batches import pad_batch, preference_rows
from model.finetune.examples import PreferenceExample
from model.finetune.objectives import OBJECTIVES
from model.finetune.objectives.objective import pairs as pairs_in
from model.finetune.objectives.orpo import OddsRatioLoss, orpo_losses
from model.finetune.objectives.preference import PreferenceLoss, preference_losses, sequence_logps
from model.hf_folder import load_hf_folder, read_weight_tensors
from model.train.checkpoint import list_checkpoints
from model.train.data import IGNORE_INDEX
from model.train.loss import language_model_loss
from model.train.metrics import read_metrics

REPO = Path(__file__).resolve().parent.parent
FACTS = [("What is the capital of France?", "Paris."), ("Two plus two?", "Four."),
         ("Colour of the sky?", "Blue."), ("Opposite of hot?", "Cold."), ("First letter?", "A."),
         ("Frozen water?", "Ice."), ("Largest ocean?", "Pacific."), ("Author of Hamlet?", "Shakespeare.")]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("finetune") / "base")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sft-data")
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in FACTS]
    rows += [{"prompt": q, "completion": " " + a} for q, a in FACTS[:4]]
    rows += [{"text": "In the beginning God created the heaven and the earth."}]
    rows.insert(3, "{not json")
    rows.insert(6, {"question": "no known fields"})
    return write_jsonl(folder / "train.jsonl", rows)


@pytest.fixture(scope="module")
def preference_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pref-data")
    rows = []
    for i, (q, a) in enumerate(FACTS):
        wrong = FACTS[(i + 3) % len(FACTS)][1]
        rows.append({"prompt": q, "chosen": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                     "rejected": [{"role": "user", "content": q}, {"role": "assistant", "content": wrong}]})
    return write_jsonl(folder / "pairs.jsonl", rows)


def finetune(run: Path, base: Path, data: Path, method: str, *extra: str) -> int:
    return main(["finetune", "--init-from", str(base), "--data", str(data), "--method", method, "--out", str(run),
                 "--sequence-length", "64", "--micro-batch-size", "4", "--threads", "1", "--no-progress",
                 "--eval-every", "1000", *extra])


def train_records(run: Path) -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]


# ---------------------------------------------------------------- SFT masking


def test_sft_loss_is_the_mean_cross_entropy_over_exactly_the_completion_tokens(base):
    _, model = load_hf_folder(base)
    prompt, completion = [1, 450, 338, 263], [3681, 29889, 2]  # BOS + a prompt; a completion ending in EOS
    ids, trained = prompt + completion, [False] * len(prompt) + [True] * len(completion)
    short = [1, 910, 2]
    inputs, targets = pad_batch([ids, short], [trained, [False, True, True]], pad_id=2)
    with torch.no_grad():
        logits = model(inputs)
    sums = language_model_loss(logits, targets, z_loss=0.0)
    # By hand: position t predicts token t + 1; only the completion tokens (and the short row's two) count.
    expected = []
    for row, (seq, mask) in enumerate(((ids, trained), (short, [False, True, True]))):
        for t in range(1, len(seq)):
            if mask[t]:
                expected.append(-F.log_softmax(logits[row, t - 1], -1)[seq[t]])
    assert sums.tokens == len(completion) + 2 == len(expected)
    # float32 sums in another order: equal to a few ulps of a loss near 10, not to an absolute 1e-6
    assert float(sums.loss) / sums.tokens == pytest.approx(float(torch.stack(expected).mean()), rel=1e-6)
    assert (targets[0, :len(prompt) - 1] == IGNORE_INDEX).all() and (targets[1, 2:] == IGNORE_INDEX).all()


# ---------------------------------------------------------------- DPO / RSO loss


def test_dpo_and_rso_losses_equal_the_published_formulas_on_a_hand_computed_example():
    policy_c, policy_r = torch.tensor([-4.0, -9.0]), torch.tensor([-6.0, -5.0])
    ref_c, ref_r = torch.tensor([-5.0, -8.0]), torch.tensor([-5.0, -6.0])
    beta = 0.5
    # pair 0: z = 0.5 * ((-4 + 5) - (-6 + 5)) = 1.0 ; pair 1: z = 0.5 * ((-9 + 8) - (-5 + 6)) = -1.0
    dpo, chosen, rejected = preference_losses(policy_c, policy_r, ref_c, ref_r, beta, "sigmoid")
    assert dpo.tolist() == pytest.approx([math.log(1 + math.exp(-1.0)), math.log(1 + math.exp(1.0))])
    assert chosen.tolist() == [0.5, -0.5] and rejected.tolist() == [-0.5, 0.5]
    rso, _, _ = preference_losses(policy_c, policy_r, ref_c, ref_r, beta, "hinge")
    assert rso.tolist() == pytest.approx([0.0, 2.0])


def test_the_preference_loss_reads_chosen_rows_then_rejected_rows_and_counts_pairs(base):
    _, model = load_hf_folder(base)
    pairs = [PreferenceExample([1, 450, 338], [3681, 2], [4517, 29889, 2]),
             PreferenceExample([1, 910], [263, 2], [278, 2])]
    ids, trained = preference_rows(pairs)
    inputs, targets = pad_batch(ids, trained, pad_id=2)
    logits = model(inputs)
    logps = sequence_logps(logits, targets)
    by_hand = []
    for row, seq in enumerate(ids):
        prompt = len(pairs[row % 2].prompt)
        by_hand.append(sum(float(F.log_softmax(logits[row, t - 1], -1)[seq[t]]) for t in range(prompt, len(seq))))
    assert logps.tolist() == pytest.approx(by_hand, abs=1e-5)
    ref = torch.tensor([-3.0, -4.0, -5.0, -6.0])
    sums = PreferenceLoss(0.1, "sigmoid")(logits, targets, ref)
    losses, _, _ = preference_losses(logps[:2], logps[2:], ref[:2], ref[2:], 0.1, "sigmoid")
    assert float(sums.total) == pytest.approx(float(losses.sum()), abs=1e-6)
    assert pairs_in((inputs, targets, ref)) == 2


def test_orpo_loss_equals_the_published_formula_on_a_hand_computed_example():
    # Mean token log-probabilities of two pairs' completions: P = exp(mean), odds = P / (1 - P).
    chosen, rejected = torch.tensor([math.log(0.5), math.log(0.2)]), torch.tensor([math.log(0.25), math.log(0.8)])
    lam = 0.25
    # pair 0: odds 1 and 1/3, log odds ratio ln 3;  pair 1: odds 1/4 and 4, log odds ratio -ln 16
    losses, odds_term, ratio = orpo_losses(chosen, rejected, lam)
    assert ratio.tolist() == pytest.approx([math.log(3), -math.log(16)])
    by_hand = [-math.log(0.5) + lam * math.log(1 + 1 / 3), -math.log(0.2) + lam * math.log(1 + 16)]
    assert losses.tolist() == pytest.approx(by_hand)
    assert odds_term.tolist() == pytest.approx([math.log(4 / 3), math.log(17)])


def test_the_orpo_loss_averages_log_probabilities_over_each_completions_tokens(base):
    _, model = load_hf_folder(base)
    pair = [PreferenceExample([1, 450, 338], [3681, 29889, 2], [4517, 2])]  # completions of 3 and 2 tokens
    inputs, targets = pad_batch(*preference_rows(pair), pad_id=2)
    logits = model(inputs)
    sums = sequence_logps(logits, targets)
    mean_chosen, mean_rejected = float(sums[0]) / 3, float(sums[1]) / 2
    loss = OddsRatioLoss(0.1)(logits, targets)
    expected, _, _ = orpo_losses(torch.tensor([mean_chosen]), torch.tensor([mean_rejected]), 0.1)
    assert float(loss.total) == pytest.approx(float(expected), abs=1e-5)
    assert set(loss.extras) == set(OBJECTIVES["orpo"].metrics)


# ---------------------------------------------------------------- runs


def test_sft_run_quarantines_bad_records_with_their_line_and_reason(base, sft_data, tmp_path, capsys):
    run = tmp_path / "sft"
    assert finetune(run, base, sft_data, "sft", "--steps", "3") == 0
    assert (f"elm-train: note: 2 of 15 training records quarantined (no format fits, or nothing is left to train), "
            f"each with its place and reason: {run / 'quarantine.jsonl'}") in capsys.readouterr().err
    bad = [json.loads(line) for line in (run / "quarantine.jsonl").read_text().splitlines()]
    assert [b["where"] for b in bad] == [f"{sft_data}:4", f"{sft_data}:7"]
    assert "JSON" in bad[0]["reason"] and bad[1]["reason"]
    info = json.loads((run / "run.json").read_text())
    assert info["data"]["train_examples"] == 13 and info["data"]["quarantined"] == 2
    assert info["status"] == "complete" and len(train_records(run)) == 3


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_adapter_run_trains_only_the_adapter_and_its_merged_weights_give_its_logits(base, sft_data, tmp_path,
                                                                                   method):
    run = tmp_path / method
    assert finetune(run, base, sft_data, method, "--steps", "4", "--max-lr", "1e-2", "--warmup-steps", "1",
                    "--lora-rank", "4", "--lora-alpha", "8") == 0
    info = json.loads((run / "run.json").read_text())
    assert info["adapter"]["method"] == method and 0 < info["trainable_parameters"] < info["parameters"] / 5
    checkpoint = list_checkpoints(run)[-1][1]
    adapter = load_file(str(checkpoint / ADAPTER_DIR / ADAPTER_WEIGHTS))
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in adapter.items())

    # The adapter model rebuilt from the base and the saved adapter; its frozen base is the base, bit for bit.
    from model.adapters.lora import load_adapter_state
    _, model = load_hf_folder(base)
    model = add_adapters(model, AdapterSettings(method, 4, 8.0, 0.1))
    load_adapter_state(model, adapter, "test")
    model.eval()
    base_tensors = read_weight_tensors(base)
    merged = merged_state(model)
    for name, tensor in base_tensors.items():
        key = name if name in dict(model.named_parameters()) else name.replace(".weight", ".base_layer.weight")
        assert torch.equal(dict(model.named_parameters())[key], tensor), name
    assert any(not torch.equal(merged[k], base_tensors[k]) for k in merged)

    _, merged_model = load_hf_folder(checkpoint)  # the checkpoint folder holds the merged weights
    ids = torch.randint(0, 32000, (2, 20), generator=torch.Generator().manual_seed(1))
    # In float64, so that what is compared is the merge (its weights rounded to float32 as saved), not the float32
    # rounding of W x + s B (A x) against (W + s B A) x, which alone comes near 1e-5.
    with torch.no_grad():
        assert torch.allclose(merged_model.double().eval()(ids), model.double()(ids), atol=1e-5, rtol=0)


def test_only_adapter_parameters_receive_gradients(base):
    _, model = load_hf_folder(base)
    model = add_adapters(model, AdapterSettings("lora", 4, 8.0, 0.0))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    ids = torch.randint(0, 32000, (2, 12))
    language_model_loss(model(ids[:, :-1]), ids[:, 1:], z_loss=0.0).total.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all("lora_" in n for n in with_grad)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == with_grad


def test_orpo_training_without_a_reference_raises_the_odds_of_the_chosen(base, preference_data, tmp_path):
    run = tmp_path / "orpo"
    assert finetune(run, base, preference_data, "orpo", "--steps", "12", "--max-lr", "3e-3", "--warmup-steps", "1",
                    "--orpo-lambda", "1.0", "--micro-batch-size", "8") == 0
    rows = train_records(run)
    assert set(OBJECTIVES["orpo"].metrics) <= set(rows[0])
    assert rows[-1]["log_odds_ratio"] > rows[0]["log_odds_ratio"] + 0.1
    assert rows[-1]["nll_chosen"] < rows[0]["nll_chosen"] and rows[-1]["odds_accuracy"] >= 0.75
    assert not (run / "reference_logps.pt").exists()
    info = json.loads((run / "run.json").read_text())
    assert info["method"] == "orpo" and info["adapter"] is None


@pytest.mark.parametrize("method", ["dpo", "rso"])
def test_preference_training_raises_accuracy_and_margin(base, preference_data, tmp_path, method):
    run = tmp_path / method
    assert finetune(run, base, preference_data, method, "--steps", "12", "--max-lr", "3e-3", "--warmup-steps", "1",
                    "--beta", "0.5", "--micro-batch-size", "8") == 0
    rows = train_records(run)
    assert {"reward_accuracy", "reward_margin", "reward_chosen", "reward_rejected"} <= set(rows[0])
    first, last = rows[0], rows[-1]
    assert first["reward_margin"] == pytest.approx(0.0, abs=1e-5)  # the policy starts as the reference
    assert last["reward_margin"] > first["reward_margin"] + 0.1
    assert last["reward_accuracy"] > first["reward_accuracy"] and last["reward_accuracy"] >= 0.75
    assert (run / "reference_logps.pt").is_file()


def test_a_preference_run_refuses_sft_data_naming_the_first_bad_line(base, sft_data, tmp_path, capsys):
    assert finetune(tmp_path / "bad", base, sft_data, "dpo", "--steps", "2") == 2
    err = capsys.readouterr().err
    assert f"{sft_data}:1" in err and "chosen" in err


def command(base: Path, data: Path, run: Path, method: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "model.cli", "finetune", "--init-from", str(base), "--data", str(data),
            "--method", method, "--out", str(run), "--sequence-length", "64", "--micro-batch-size", "2",
            "--steps", "12", "--checkpoint-every", "2", "--keep-checkpoints", "2", "--max-lr", "5e-3",
            "--warmup-steps", "2", "--threads", "1", "--no-progress", "--lora-rank", "4", *extra]


def test_a_run_killed_and_resumed_reproduces_every_loss(base, preference_data, tmp_path):
    # DPO with LoRA: the preference loss, its reference model and an adapter's state all resume, in one run
    data, method = preference_data, "dpo"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    reference = tmp_path / "reference"
    assert main(command(base, data, reference, method, "--adapter", "lora")[3:]) == 0
    interrupted = tmp_path / "interrupted"
    proc = subprocess.Popen(command(base, data, interrupted, method, "--adapter", "lora"), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (interrupted / "metrics.jsonl").exists() or len(train_records(interrupted)) < 5:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "the run made no progress"
        time.sleep(0.02)
    proc.send_signal(signal.SIGSTOP)  # frozen: the kill lands where the records now stand
    reached = len(train_records(interrupted))
    assert 5 <= reached < 12, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert len(train_records(interrupted)) == reached
    subprocess.run(command(base, data, interrupted, method, "--adapter", "lora", "--resume"), cwd=REPO, env=env,
                   check=True,
                   capture_output=True)
    losses = [(r["step"], r["loss"]) for r in train_records(interrupted)]
    assert [s for s, _ in losses] == list(range(1, 13))
    assert losses == [(r["step"], r["loss"]) for r in train_records(reference)]


# ---------------------------------------------------------------- what comes after a run: eval and export


@pytest.fixture(scope="module")
def lora_run(base, sft_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("lora-run") / "run"
    assert finetune(run, base, sft_data, "lora", "--steps", "3", "--max-lr", "1e-2", "--warmup-steps", "1",
                    "--lora-rank", "4") == 0
    return run


def test_eval_of_a_finetuned_run_merged_equals_eval_of_its_base_with_the_adapter(lora_run, base, tmp_path):
    from eval_data import write_tasks
    from model.eval.harness import evaluate
    (tmp_path / "tasks").mkdir()
    tasks = write_tasks(tmp_path / "tasks", ("elm_mc",))
    merged = evaluate(lora_run, "elm_mc", include_path=str(tasks), device="cpu", batch_size=4, log_samples=True)
    adapter = list_checkpoints(lora_run)[-1][1] / ADAPTER_DIR
    applied = evaluate(base, "elm_mc", include_path=str(tasks), device="cpu", batch_size=4, log_samples=True,
                       adapter=str(adapter))
    plain = evaluate(base, "elm_mc", include_path=str(tasks), device="cpu", batch_size=4, log_samples=True)

    def logliks(evaluation):
        return [r[0][0] for s in evaluation.results["samples"]["elm_mc"] for r in s["resps"]]
    assert logliks(merged) == pytest.approx(logliks(applied), abs=1e-4)
    assert logliks(plain) != pytest.approx(logliks(applied), abs=1e-4)  # the adapter did change the model
    assert merged.results["results"]["elm_mc"]["acc,none"] == applied.results["results"]["elm_mc"]["acc,none"]


def test_an_export_of_a_chat_run_tokenizes_its_chat_template_as_training_did(lora_run, tmp_path):
    from transformers import AutoTokenizer

    from corpus.tokenizer.tokenizer import Tokenizer
    from model.export import export
    from model.finetune.examples import tokenize_sft
    from model.finetune.records import Chat, Message
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": FACTS[0][0]},
                {"role": "assistant", "content": FACTS[0][1]}]
    trained = tokenize_sft(Chat("x", tuple(Message(**m) for m in messages)), Tokenizer(), 256)
    folder = export(lora_run, tmp_path / "hf", fmt="hf")
    hf = AutoTokenizer.from_pretrained(str(folder))
    theirs = hf.apply_chat_template(messages, tokenize=True, return_dict=False)
    # Training starts with BOS (the template adds none) and ends at the last EOS (the template adds a line break).
    assert trained.input_ids[0] == hf.bos_token_id
    assert theirs[:len(trained.input_ids) - 1] == trained.input_ids[1:]
    assert hf.decode(theirs[len(trained.input_ids) - 1:]).strip() == ""
    prompt = hf.apply_chat_template(messages[:2], add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|assistant|>\n")
    from mlx_lm.tokenizer_utils import load as load_mlx_tokenizer
    mlx_folder = export(lora_run, tmp_path / "mlx", fmt="mlx")
    assert load_mlx_tokenizer(mlx_folder).apply_chat_template(messages, tokenize=True) == theirs


def test_a_preference_runs_curves_draw_its_rewards_and_accuracy(base, preference_data, sft_data, tmp_path):
    import matplotlib.image
    dpo, sft = tmp_path / "dpo-curves", tmp_path / "sft-curves"
    assert finetune(dpo, base, preference_data, "dpo", "--steps", "3", "--micro-batch-size", "8") == 0
    assert finetune(sft, base, sft_data, "sft", "--steps", "3") == 0
    # The SFT run draws loss and learning rate; the DPO run a third panel: rewards, margin, preference accuracy.
    assert matplotlib.image.imread(dpo / "curves.png").shape[0] > matplotlib.image.imread(sft / "curves.png").shape[0]


def test_two_ranks_under_torchrun_fine_tune_like_one_process(base, preference_data, tmp_path):
    # DPO with LoRA: the preference loss over both ranks' pairs and the adapter's gradients, in one run.
    # A global batch of 4 rows of 64 tokens: one process accumulates two micro-batches of 2, two ranks take one each.
    # No adapter dropout: each rank draws its own dropout masks.
    args = ["finetune", "--init-from", str(base), "--data", str(preference_data), "--method", "dpo", "--adapter", "lora",
            "--steps", "3",
            "--sequence-length", "64", "--micro-batch-size", "2", "--global-batch-tokens", "256", "--max-lr", "5e-3",
            "--warmup-steps", "1", "--lora-dropout", "0", "--threads", "1", "--no-progress", "--eval-every", "1000"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    alone = subprocess.run([sys.executable, "-m", "model.cli", *args, "--out", str(tmp_path / "one")], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr[-3000:]
    ranks = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            "-m", "model.cli", *args, "--out", str(tmp_path / "two")], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "run.json").read_text())["world_size"] == 2
    one, two = train_records(tmp_path / "one"), train_records(tmp_path / "two")
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-4)
    assert [r["tokens"] for r in two] == [r["tokens"] for r in one]
    assert [r["reward_margin"] for r in two] == pytest.approx([r["reward_margin"] for r in one], abs=1e-4)
    assert (tmp_path / "two" / "run.json").is_file() and list((tmp_path / "two").rglob("adapter*"))


# ---------------------------------------------------------------- recipes


def test_the_peft_recipe_is_corenets_and_flags_override_it():
    from model.finetune.config import FinetuneConfig
    from model.train.config import resolve_config
    cfg = resolve_config({}, {"recipe": "openelm-peft", "init_from": "x", "data": "d.jsonl", "steps": 20_000},
                         kind=FinetuneConfig)
    assert (cfg.method, cfg.adapter, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout) == ("sft", "lora", 32, 32.0, 0.1)
    assert cfg.adapter_settings().targets == ("qkv_proj", "out_proj", "proj_1", "proj_2")
    assert (cfg.max_lr, cfg.max_lr * cfg.min_lr_ratio, cfg.warmup_steps) == (3e-4, pytest.approx(3e-5), 1000)
    assert (cfg.beta1, cfg.beta2, cfg.weight_decay, cfg.grad_clip, cfg.epochs) == (0.9, 0.95, 0.0, 1.0, 3.0)
    dora = resolve_config({}, {"recipe": "openelm-peft", "init_from": "x", "data": "d", "method": "dora",
                               "lora_rank": 8, "steps": 100}, kind=FinetuneConfig)
    assert dora.adapter_settings().method == "dora" and dora.lora_rank == 8 and dora.warmup_steps == 10
    assert (dora.method, dora.adapter) == ("sft", "dora")
    dpo = resolve_config({}, {"recipe": "openelm-peft", "init_from": "x", "data": "d", "method": "dpo", "steps": 9},
                         kind=FinetuneConfig)
    assert (dpo.method, dpo.adapter, dpo.objective.needs_reference) == ("dpo", "lora", True)


@pytest.mark.parametrize("method, adapter, objective, expected_adapter", [
    ("lora", "none", "sft", "lora"), ("dora", "none", "sft", "dora"), ("sft", "dora", "sft", "dora"),
    ("rso", "lora", "rso", "lora"), ("orpo", "none", "orpo", "none")])
def test_method_is_the_objective_and_adapter_how_weights_train(method, adapter, objective, expected_adapter):
    from model.finetune.config import FinetuneConfig
    from model.train.config import resolve_config
    cfg = resolve_config({}, {"init_from": "x", "data": "d", "method": method, "adapter": adapter, "steps": 4},
                         kind=FinetuneConfig)
    assert (cfg.method, cfg.adapter) == (objective, expected_adapter)
    assert (cfg.adapter_settings() is None) == (expected_adapter == "none")


def test_the_instruct_recipe_takes_the_row_of_the_models_size(tmp_path):
    from model.finetune.config import FinetuneConfig
    from model.presets import get_preset
    from model.train.config import resolve_config
    folder = tmp_path / "m"  # config.json alone tells the size
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(get_preset("openelm-1.1b").to_hf_config()))
    cfg = resolve_config({}, {"recipe": "openelm-instruct", "init_from": str(folder), "data": "d"},
                         kind=FinetuneConfig)
    assert (cfg.method, cfg.epochs, cfg.max_lr, cfg.beta, cfg.instruct_size) == ("dpo", 5.0, 5e-5, 0.01,
                                                                                  "openelm-1.1b")
    assert (cfg.sequence_length, cfg.max_prompt_length, cfg.min_lr_ratio) == (1024, 512, 0.0)
    cfg.set_steps(train_examples=1000, world_size=1)  # 5 epochs of 1000 pairs in batches of 8
    assert cfg.steps == 625 and cfg.warmup_steps == 63
    small = resolve_config({}, {"recipe": "openelm-instruct", "init_from": str(tmp_path / "none"), "data": "d"},
                           kind=FinetuneConfig)
    assert (small.method, small.epochs, small.max_lr) == ("rso", 5.0, 2e-5)


def test_bad_settings_are_refused_by_name(base, sft_data, tmp_path, capsys):
    assert finetune(tmp_path / "a", base, sft_data, "qlora", "--steps", "2") == 2
    assert "--method must be one of sft, dpo, rso, orpo" in capsys.readouterr().err
    assert finetune(tmp_path / "e", base, sft_data, "sft", "--adapter", "qlora", "--steps", "2") == 2
    assert "--adapter must be one of none, lora, dora" in capsys.readouterr().err
    assert main(["finetune", "--data", str(sft_data), "--steps", "2", "--out", str(tmp_path / "b")]) == 2
    assert "--init-from is required" in capsys.readouterr().err
    assert finetune(tmp_path / "c", base, sft_data, "lora", "--steps", "2", "--lora-targets", "token_embeddings") == 2
    assert "ties it to the output projection" in capsys.readouterr().err
    assert finetune(tmp_path / "d", base, tmp_path / "missing.jsonl", "sft", "--steps", "2") == 2
    assert "missing.jsonl" in capsys.readouterr().err


# ---------------------------------------------------------------- damaged checkpoints


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damaged", ["trainer_state.pt", "model.safetensors"])
def test_resume_steps_over_a_damaged_newest_checkpoint_and_is_exact_from_the_older(base, sft_data, tmp_path, capsys,
                                                                                   damaged):
    args = ("--steps", "6", "--checkpoint-every", "2", "--max-lr", "5e-3", "--warmup-steps", "1", "--micro-batch-size",
            "2")
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert finetune(reference, base, sft_data, "sft", *args) == 0
    assert finetune(run, base, sft_data, "sft", *args) == 0
    newest = list_checkpoints(run)[-1][1]
    truncate(newest / damaged)
    capsys.readouterr()
    assert finetune(run, base, sft_data, "sft", *args, "--resume") == 0
    err = capsys.readouterr().err
    assert f"{newest}: {damaged} is damaged" in err and "resuming from step_00000004" in err
    assert [(r["step"], r["loss"]) for r in train_records(run)] == [(r["step"], r["loss"]) for r in
                                                                   train_records(reference)]
    from model.train.checkpoint import damage
    assert damage(newest) is None  # step 6 written again, whole


def test_eval_export_and_init_from_name_a_damaged_checkpoint_in_one_line_and_take_another_step(base, sft_data,
                                                                                                tmp_path, capsys):
    run = tmp_path / "run"
    assert finetune(run, base, sft_data, "sft", "--steps", "4", "--checkpoint-every", "2") == 0
    newest = list_checkpoints(run)[-1][1]
    truncate(newest / "model.safetensors")
    capsys.readouterr()
    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{newest}: model.safetensors is damaged" in err and "steps 2" in err and "--step N" in err
    assert main(["eval", str(newest), "--tasks", "elm_mc"]) == 2
    assert f"{newest}: model.safetensors is damaged" in capsys.readouterr().err
    assert finetune(tmp_path / "next", run, sft_data, "sft", "--steps", "1") == 2
    assert f"{newest}: model.safetensors is damaged" in capsys.readouterr().err
    assert main(["export", str(run), "--step", "2", "--format", "hf", "--out", str(tmp_path / "out")]) == 0
    assert finetune(tmp_path / "next", run, sft_data, "sft", "--steps", "1", "--step", "2") == 0


def test_fine_tuning_the_tiny_preset_with_defaults_cuts_the_sequence_to_its_context(sft_data, tmp_path, capsys):
    from model.hf_folder import write_hf_folder
    from model.presets import get_preset
    from corpus.tokenizer.tokenizer import default_model_path
    import shutil
    tiny = get_preset("tiny")
    folder = write_hf_folder(tmp_path / "tiny", tiny, shaped_random_state(tiny, seed=0))
    shutil.copy(default_model_path(), folder / "tokenizer.model")
    run = tmp_path / "run"
    assert main(["finetune", "--init-from", str(folder), "--data", str(sft_data), "--steps", "1", "--out", str(run),
                 "--no-progress", "--threads", "1"]) == 0
    assert (f"sequence length {tiny.max_context_length}: the model's context (max_context_length), not 2048"
            in capsys.readouterr().err)
    import yaml
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["sequence_length"] == tiny.max_context_length < 2048
    instruct = tmp_path / "instruct"  # the recipe's 1024 and its prompt share of it are cut alike
    assert main(["finetune", "--init-from", str(folder), "--data", str(sft_data), "--recipe", "openelm-instruct",
                 "--method", "sft", "--steps", "1", "--out", str(instruct), "--no-progress", "--threads", "1"]) == 0
    saved = yaml.safe_load((instruct / "config.yaml").read_text())
    assert (saved["sequence_length"], saved["max_prompt_length"]) == (tiny.max_context_length,
                                                                      tiny.max_context_length // 2)


def test_a_second_job_on_a_run_folder_is_refused_naming_the_first_and_a_killed_job_blocks_nothing(
        base, sft_data, tmp_path, capsys):
    run = tmp_path / "run"
    first = subprocess.Popen(command(base, sft_data, run, "sft", "--steps", "100000"), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (run / "metrics.jsonl").exists() or not train_records(run):  # the first job is training
            assert first.poll() is None, "the first job ended before the second could meet it"
            assert time.time() < deadline, "the first job made no progress"
            time.sleep(0.05)
        capsys.readouterr()
        assert main(command(base, sft_data, run, "sft", "--resume")[3:]) == 2
        err = capsys.readouterr().err.strip()
        assert f"{run} is in use by another job (process {first.pid} on" in err and len(err.splitlines()) == 1
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert main(command(base, sft_data, run, "sft", "--steps", "14", "--resume")[3:]) == 0
    assert train_records(run)[-1]["step"] == 14


def test_the_progress_line_fits_80_columns_under_a_terminal_and_says_what_follows_the_last_step(base, sft_data,
                                                                                               tmp_path):
    import fcntl
    import pty
    import struct
    import termios
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    cmd = [a for a in command(base, sft_data, tmp_path / "run", "sft", "--steps", "6") if a != "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # the terminal closes with the process
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait() == 0
    drawn = [part.replace("\x1b[K", "") for part in out.decode().replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    lines = [line for line in drawn if line.startswith("step ")]
    steps = [line for line in lines if " ETA " in line]
    assert len(steps) >= 6 and all(len(line) <= 80 for line in lines), lines
    assert all(re.match(r"step \d+/6 .*ETA (\d+[smhd]|\?)", line) for line in steps), steps
    assert any("loss " in line for line in steps)
    assert any(line.startswith("step 6/6  writing the final checkpoint...") for line in lines)
    assert any(line.startswith("step 6/6  drawing the curves...") for line in lines)
    assert any(line.startswith("done: ") for line in drawn)
