"""`elm-train eval`: the project's model as an lm-evaluation-harness LM, on local tasks in lm-eval's own YAML.

The model is a small OpenELM with seeded random weights in a Hugging Face-format folder (a
context of 48 tokens, so long contexts are cut); its tokenizer.model lies beside it. Every
log-likelihood is checked against a direct computation with the model itself.
"""
from __future__ import annotations

import json
import math
import time

import pytest
import torch
import torch.nn.functional as F

from corpus.tasks.manager import apply_template as _apply_template
from corpus.tasks.sets import TASK_SETS, expand_tasks
from corpus.tokenizer.tokenizer import Tokenizer
from eval_data import CONTEXT, FILLS, PROMPTS, QUESTIONS, TEXTS, requests, write_model, write_tasks
from model.eval.harness import EvalError, evaluate, load_model
from model.eval.item_scores import item_scores
from model.eval.lm import OpenELMLM
from model.eval.tasks import published_row
from model.openelm import OpenELM


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("eval") / "model")


@pytest.fixture(scope="module")
def loaded(model_dir):
    model, tokenizer, _ = load_model(model_dir, device="cpu")
    return model, tokenizer


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    """Four local tasks in lm-eval's YAML: multiple choice (the choices as continuations, and as contexts), rolling
    log-likelihood and generation."""
    return write_tasks(tmp_path_factory.mktemp("tasks"))


def direct_loglikelihood(model: OpenELM, tokens: list[int], n_continuation: int) -> float:
    """Sum of log-softmax over the last `n_continuation` tokens, from the model run on the tokens before each."""
    window = tokens[-(CONTEXT + 1):]  # what fits the model's context, cut on the left
    with torch.no_grad():
        logits = model(torch.tensor([window[:-1]]))[0].float()
    logprobs = F.log_softmax(logits, dim=-1)
    targets = window[-n_continuation:]
    positions = range(len(window) - 1 - n_continuation, len(window) - 1)
    return float(sum(logprobs[p, t] for p, t in zip(positions, targets)))


def split_ids(tokenizer: Tokenizer, context: str, continuation: str, bos: bool) -> tuple[list[int], list[int]]:
    """(BOS + context + continuation ids, continuation ids), split as the harness splits: the continuation is what
    encoding the whole adds after as many tokens as the context alone encodes to."""
    context_ids = tokenizer.encode_one(context, bos=bos, eos=False)
    continuation_ids = tokenizer.encode_one(context + continuation, bos=bos, eos=False)[len(context_ids):]
    return context_ids + continuation_ids, continuation_ids


# ---------------------------------------------------------------- the LM against the model itself

@pytest.mark.parametrize("bos", [True, False])
def test_loglikelihood_equals_the_model_summed_over_the_continuation(loaded, bos):
    model, tokenizer = loaded
    lm = OpenELMLM(model, tokenizer, batch_size=4, add_bos=bos)
    pairs = [(q, c) for q, choices, _ in QUESTIONS for c in choices[:2]]
    got = lm.loglikelihood(requests("loglikelihood", pairs), disable_tqdm=True)
    for (context, continuation), (logprob, _) in zip(pairs, got, strict=True):
        whole, cont = split_ids(tokenizer, context, continuation, bos)
        assert whole[0] == tokenizer.bos_id if bos else whole[0] != tokenizer.bos_id
        assert logprob == pytest.approx(direct_loglikelihood(model, whole, len(cont)), abs=1e-5)


def test_bos_changes_the_answers_and_is_on_by_default(loaded):
    model, tokenizer = loaded
    pair = [("And God said, Let there be", " light")]
    default = OpenELMLM(model, tokenizer).loglikelihood(requests("loglikelihood", pair), disable_tqdm=True)
    with_bos = OpenELMLM(model, tokenizer, add_bos=True).loglikelihood(requests("loglikelihood", pair),
                                                                       disable_tqdm=True)
    without = OpenELMLM(model, tokenizer, add_bos=False).loglikelihood(requests("loglikelihood", pair),
                                                                       disable_tqdm=True)
    assert default == with_bos and abs(with_bos[0][0] - without[0][0]) > 1e-4


def test_a_context_longer_than_the_model_is_cut_on_the_left(loaded):
    model, tokenizer = loaded
    context = " ".join(["And it was so."] * 20)
    whole, cont = split_ids(tokenizer, context, " Amen", bos=True)
    assert len(whole) > CONTEXT + 1
    (logprob, _), = OpenELMLM(model, tokenizer).loglikelihood(requests("loglikelihood", [(context, " Amen")]),
                                                                disable_tqdm=True)
    assert logprob == pytest.approx(direct_loglikelihood(model, whole, len(cont)), abs=1e-5)
    uncut = direct_loglikelihood(model, whole[-(CONTEXT + 1):], len(cont))  # the same window, given directly
    assert logprob == pytest.approx(uncut, abs=1e-5)


def test_is_greedy_is_true_exactly_for_the_argmax_continuation(loaded):
    model, tokenizer = loaded
    lm = OpenELMLM(model, tokenizer)
    context = tokenizer.encode_one("In the beginning", bos=True, eos=False)
    greedy = []
    for _ in range(3):
        with torch.no_grad():
            greedy.append(int(model(torch.tensor([context + greedy]))[0, -1].argmax()))
    other = greedy[:2] + [(greedy[2] + 1) % model.config.vocab_size]
    got = lm._loglikelihood_tokens([(None, context, greedy), (None, context, other)])
    assert [g for _, g in got] == [True, False]


def test_batched_answers_equal_answers_one_at_a_time(loaded):
    model, tokenizer = loaded
    pairs = [(q, c) for q, choices, _ in QUESTIONS for c in choices]
    batched = OpenELMLM(model, tokenizer, batch_size=5).loglikelihood(requests("loglikelihood", pairs),
                                                                      disable_tqdm=True)
    single = OpenELMLM(model, tokenizer, batch_size=1).loglikelihood(requests("loglikelihood", pairs),
                                                                     disable_tqdm=True)
    assert [g for _, g in batched] == [g for _, g in single]
    assert [lp for lp, _ in batched] == pytest.approx([lp for lp, _ in single], abs=1e-5)


def test_rolling_loglikelihood_of_a_short_text_is_every_token_given_the_ones_before(loaded):
    model, tokenizer = loaded
    lm = OpenELMLM(model, tokenizer, add_bos=False)
    text = TEXTS[0]
    tokens = tokenizer.encode_one(text, bos=False, eos=False)
    (got,) = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,)]), disable_tqdm=True)
    assert got == pytest.approx(direct_loglikelihood(model, [tokenizer.bos_id] + tokens, len(tokens)), abs=1e-5)


def test_rolling_loglikelihood_of_a_long_text_adds_its_windows(loaded):
    model, tokenizer = loaded
    lm = OpenELMLM(model, tokenizer)
    text = TEXTS[1]
    tokens = tokenizer.encode_one(text, bos=True, eos=False)
    assert len(tokens) > 2 * CONTEXT
    (got,) = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,)]), disable_tqdm=True)
    # lm-eval's rolling windows: the first predicts the first CONTEXT tokens after the prefix (BOS); each later
    # one predicts the next CONTEXT (or fewer, at the end) from the CONTEXT + 1 tokens that end with them.
    n = len(tokens)
    expected = direct_loglikelihood(model, [tokenizer.bos_id] + tokens[:CONTEXT], min(CONTEXT, n))
    predicted = min(CONTEXT, n)
    while predicted < n:
        k = min(n - predicted, CONTEXT)
        end = predicted + k
        expected += direct_loglikelihood(model, tokens[end - CONTEXT - 1:end], k)
        predicted += k
    assert got == pytest.approx(expected, abs=1e-4)


def test_generation_is_greedy_and_stops_at_the_first_until_string(loaded):
    model, tokenizer = loaded
    lm = OpenELMLM(model, tokenizer)
    prompt = "Numbers: one, two,"
    (free,) = lm.generate_until(requests("generate_until", [(prompt, {"until": [], "max_gen_toks": 12})]),
                                disable_tqdm=True)
    ids = tokenizer.encode_one(prompt, bos=True, eos=False)
    greedy = []
    for _ in range(12):
        with torch.no_grad():
            nxt = int(model(torch.tensor([ids + greedy]))[0, -1].argmax())
        if nxt == tokenizer.eos_id:
            break
        greedy.append(nxt)
    assert free == tokenizer.decode(greedy)
    stop = next((ch for ch in free[1:] if not ch.isspace()), None)
    assert stop is not None
    (cut,) = lm.generate_until(requests("generate_until", [(prompt, {"until": [stop], "max_gen_toks": 12})]),
                               disable_tqdm=True)
    assert cut == free[:free.index(stop)]


# ---------------------------------------------------------------- the harness on local tasks

@pytest.fixture(scope="module")
def evaluation(model_dir, tasks_dir):
    return evaluate(model_dir, "elm_mc,elm_ppl,elm_gen,elm_fill", include_path=str(tasks_dir), device="cpu",
                    batch_size=4, log_samples=True)


def test_multiple_choice_accuracy_is_the_argmax_of_the_models_own_log_likelihoods(evaluation, loaded):
    model, tokenizer = loaded
    right = right_norm = 0
    for question, choices, answer in QUESTIONS:
        scores = []
        for choice in choices:  # the harness puts its target delimiter, one space, before each choice
            whole, cont = split_ids(tokenizer, question, " " + choice, bos=True)
            scores.append(direct_loglikelihood(model, whole, len(cont)))
        right += max(range(len(choices)), key=scores.__getitem__) == answer
        normed = [s / len(" " + c) for s, c in zip(scores, choices)]  # acc_norm: per character of the choice
        right_norm += max(range(len(choices)), key=normed.__getitem__) == answer
    row = evaluation.results["results"]["elm_mc"]
    assert row["acc,none"] == pytest.approx(right / len(QUESTIONS))
    assert row["acc_norm,none"] == pytest.approx(right_norm / len(QUESTIONS))
    assert "acc_stderr,none" in row and "acc_norm_stderr,none" in row


def test_bpb_of_an_item_is_its_gold_continuations_bits_per_byte_by_the_models_own_log_likelihood(evaluation, loaded):
    model, tokenizer = loaded
    items = item_scores(evaluation.results)
    assert set(items) == {"elm_mc", "elm_fill"}  # multiple choice only

    def bpb(context: str, gold: str) -> float:
        whole, cont = split_ids(tokenizer, context, gold, bos=True)
        return -direct_loglikelihood(model, whole, len(cont)) / (math.log(2) * len(gold.encode("utf-8")))
    mc = items["elm_mc"]
    assert mc.doc_id == tuple(range(len(QUESTIONS)))
    # as scored: the target delimiter (a space), then the gold choice
    assert mc.bpb == pytest.approx([bpb(q, " " + choices[answer]) for q, choices, answer in QUESTIONS], rel=1e-5)
    # the gold option fills the blank: its context, then the shared rest of the sentence
    fills = [bpb(text.split("_")[0] + (a if gold == "1" else b), " " + text.split("_")[1].strip())
             for text, a, b, gold in FILLS]
    assert items["elm_fill"].bpb == pytest.approx(fills, rel=1e-5) and items["elm_fill"].acc_norm == (None, None)
    row = evaluation.results["results"]["elm_mc"]
    assert row["bpb,none"] == pytest.approx(sum(mc.bpb) / len(mc.bpb)) and row["bpb_stderr,none"] > 0
    assert (mc.mean("acc"), mc.mean("acc_norm")) == pytest.approx((row["acc,none"], row["acc_norm,none"]))
    assert evaluation.results["higher_is_better"]["elm_mc"]["bpb"] is False
    assert "bpb,none" not in evaluation.results["results"]["elm_ppl"]


def test_a_groups_bpb_is_the_mean_over_the_items_of_all_its_tasks():
    from model.eval.item_scores import ItemScores, add_item_scores
    results = {"results": {"g": {"acc,none": 0.5}, "sub": {}, "a": {}, "b": {}, "other": {}},
               "group_subtasks": {"g": ["a", "sub"], "sub": ["b"]}}
    scores = {"a": ItemScores((0, 1), (1.0, 0.0), (1.0, 1.0), (1.0, 2.0)),
              "b": ItemScores((0,), (0.0,), (None,), (6.0,)), "other": ItemScores((0,), (1.0,), (1.0,), (None,))}
    add_item_scores(results, scores)
    rows = results["results"]
    assert (rows["a"]["bpb,none"], rows["b"]["bpb,none"], rows["g"]["bpb,none"]) == (1.5, 6.0, 3.0)  # not 3.75
    assert "bpb,none" not in rows["other"]  # no item's gold could be read
    assert results["items"]["b"] == {"doc_id": [0], "acc": [0.0], "acc_norm": [None], "bpb": [6.0]}
    assert item_scores(json.loads(json.dumps(results))) == scores


def test_rolling_and_generation_tasks_report_their_metrics(evaluation, loaded):
    model, tokenizer = loaded
    results = evaluation.results["results"]
    assert results["elm_ppl"]["word_perplexity,none"] > 1 and results["elm_ppl"]["bits_per_byte,none"] > 0
    lm = OpenELMLM(model, tokenizer)
    answers = lm.generate_until(requests("generate_until", [(p, {"until": ["\n", ","], "max_gen_toks": 8})
                                                            for p, _ in PROMPTS]), disable_tqdm=True)
    expected = sum(a.strip() == t.strip() for a, (_, t) in zip(answers, PROMPTS)) / len(PROMPTS)
    assert results["elm_gen"]["exact_match,none"] == pytest.approx(expected)
    logged = [s["resps"][0][0] for s in evaluation.results["samples"]["elm_gen"]]
    assert sorted(logged) == sorted(answers)


def test_the_results_record_the_run_settings(evaluation, model_dir):
    config = evaluation.results["config"]
    assert config["add_bos_token"] is True and config["batch_size"] == 4 and config["weights"] == str(model_dir)
    assert evaluation.results["n-shot"]["elm_mc"] == 0


def test_the_harness_work_done_once_gives_the_same_output_and_the_harness_is_left_as_it_was(evaluation, model_dir, tasks_dir):
    import lm_eval.evaluator
    import lm_eval.utils
    from lm_eval.loggers.utils import add_env_info
    report = evaluation.results
    assert "Python version" in report["pretty_env_info"] and report["lm_eval_version"] and report["date"]
    again = evaluate(model_dir, "elm_mc", include_path=str(tasks_dir), device="cpu", batch_size=4, limit=2)
    assert again.results["pretty_env_info"] == report["pretty_env_info"]
    assert lm_eval.evaluator.add_env_info is add_env_info and lm_eval.utils.apply_template.__module__ == "lm_eval.utils"
    doc = {"question": "Who?", "choices": ["a", "b"], "answer": 1}
    for template in ("{{question}}", "{{choices}}", "{{question | regex_replace('\\?', '!')}} {{answer}}"):
        assert _apply_template(template, doc) == lm_eval.utils.apply_template(template, doc)


def test_cli_writes_lm_eval_results_json_and_prints_a_table(model_dir, tasks_dir, tmp_path, capsys):
    from model.cli import main
    out = tmp_path / "results.json"
    assert main(["eval", str(model_dir), "--tasks", "elm_mc", "--include-path", str(tasks_dir), "--device", "cpu",
                 "--no-bos", "--limit", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    written = json.loads(out.read_text())
    row = written["results"]["elm_mc"]
    assert {"acc,none", "acc_stderr,none", "acc_norm,none", "acc_norm_stderr,none", "bpb,none"} <= set(row)
    assert written["config"]["add_bos_token"] is False and written["config"]["limit"] == 4
    lines = printed.splitlines()
    assert lines[0].split()[-1] == "bpb" and lines[1].startswith("elm_mc")
    assert f"{100 * row['acc,none']:6.2f}" in lines[1] and lines[1].split()[-3:] == [
        f"{row['bpb,none']:.3f}", "+-", f"{row['bpb_stderr,none']:.3f}"]
    assert {k: len(v) for k, v in written["items"]["elm_mc"].items()} == {"doc_id": 4, "acc": 4, "acc_norm": 4,
                                                                        "bpb": 4}


def test_a_missing_dataset_fails_in_seconds_naming_it_and_how_to_fetch_it(model_dir, monkeypatch, capsys):
    from model.cli import main
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    started = time.perf_counter()
    assert main(["eval", str(model_dir), "--tasks", "arc_easy", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert time.perf_counter() - started < 60  # a hang guard, not a speed target
    assert "allenai/ai2_arc" in err and "load_dataset" in err and "HF_DATASETS_OFFLINE=1" in err
    assert "Traceback" not in err and len(err.splitlines()) <= 2


def test_an_unknown_task_is_refused_by_name(model_dir):
    with pytest.raises(EvalError, match="unknown task.*no_such_task"):
        evaluate(model_dir, "no_such_task", device="cpu")


# ---------------------------------------------------------------- task sets and published numbers

def test_task_sets_expand_to_their_tasks_and_few_shot_counts():
    assert expand_tasks("openelm-zero-shot") == [(t, 0) for t in ("arc_challenge", "arc_easy", "boolq",
                                                                   "hellaswag", "piqa", "sciq", "winogrande")]
    five = dict(expand_tasks("arc25-hellaswag10-mmlu5-truthfulqa0-winogrande5"))
    assert five == {"arc_challenge": 25, "hellaswag": 10, "mmlu": 5, "truthfulqa_mc2": 0, "winogrande": 5}
    eight = TASK_SETS["arc25-hellaswag10-mmlu5-truthfulqa0-winogrande5-crows25-piqa0-race0"]
    assert set(eight) - set(TASK_SETS["arc25-hellaswag10-mmlu5-truthfulqa0-winogrande5"]) == {
        ("crows_pairs_english", 25), ("piqa", 0), ("race", 0)}
    assert expand_tasks("piqa,boolq", num_fewshot=3) == [("piqa", 3), ("boolq", 3)]
    assert expand_tasks("piqa") == [("piqa", None)]


def test_published_rows_hold_apples_numbers_and_their_average():
    row = published_row("openelm-270m", "openelm-zero-shot")
    assert row["hellaswag"] == 46.71 and row["average"] == 54.37
    per_task = [v for k, v in row.items() if k != "average"]
    assert sum(per_task) / len(per_task) == pytest.approx(54.37, abs=0.01)
    assert published_row("openelm-1.1b", "arc25-hellaswag10-mmlu5-truthfulqa0-winogrande5") == {"average": 45.93}
    assert published_row(None, "openelm-zero-shot") is None and published_row("tiny", "openelm-zero-shot") is None


def test_the_table_puts_published_numbers_beside_the_measured_ones(capsys):
    from model.cli import print_eval_table
    results = {"results": {"arc_easy": {"acc,none": 0.5, "acc_stderr,none": 0.01, "acc_norm,none": 0.45,
                                        "acc_norm_stderr,none": 0.01},
                           "boolq": {"acc,none": 0.6, "acc_stderr,none": 0.02}},
               "n-shot": {"arc_easy": 0, "boolq": 0}}
    print_eval_table(results, "openelm-270m", "openelm-zero-shot")
    lines = capsys.readouterr().out.splitlines()
    assert "openelm-270m (Apple)" in lines[0]
    assert lines[1].split()[:3] == ["arc_easy", "0", "50.00"] and lines[1].endswith("45.08")
    assert lines[2].endswith("53.98") and lines[-1].split()[-2:] == ["52.50", "54.37"]


# ---------------------------------------------------------------- while training

TRAIN = ["--model", "tiny", "--sequence-length", "32", "--micro-batch-size", "4", "--global-batch-tokens", "128",
         "--threads", "1", "--no-progress", "--steps", "6", "--checkpoint-every", "3", "--eval-every", "3"]


def run_records(run_dir, kind: str) -> list[dict]:
    from model.train.metrics import read_metrics
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == kind]


@pytest.fixture(scope="module")
def two_runs(token_corpus, tasks_dir, tmp_path_factory):
    """The same short run twice: plain, and with benchmark tasks at its checkpoints."""
    from model.cli import main
    root = tmp_path_factory.mktemp("runs")
    plain, evaluated = root / "plain", root / "evaluated"
    assert main(["--corpus", str(token_corpus), "--out", str(plain), *TRAIN]) == 0
    assert main(["--corpus", str(token_corpus), "--out", str(evaluated), *TRAIN, "--eval-tasks", "elm_mc,elm_ppl",
                 "--eval-tasks-include", str(tasks_dir), "--eval-tasks-limit", "4"]) == 0
    return plain, evaluated


def test_tasks_run_at_checkpoints_while_training_without_changing_the_training(two_runs):
    plain, evaluated = two_runs
    evals = run_records(evaluated, "eval")
    assert [r["step"] for r in evals] == [3, 6]
    train = run_records(evaluated, "train")
    assert [r["tokens"] for r in evals] == [train[2]["tokens"], train[5]["tokens"]]
    for r in evals:
        assert set(r["tasks"]) == {"elm_mc", "elm_ppl"}
        assert 0 <= r["tasks"]["elm_mc"]["acc"] <= 1 and 0 <= r["tasks"]["elm_mc"]["acc_norm"] <= 1
        assert r["tasks"]["elm_ppl"]["word_perplexity"] > 1
    assert [r["loss"] for r in train] == [r["loss"] for r in run_records(plain, "train")]
    assert [r["val_loss"] for r in run_records(evaluated, "val")] == [r["val_loss"] for r in run_records(plain, "val")]
    assert (evaluated / "curves.png").stat().st_size > (plain / "curves.png").stat().st_size  # the accuracy panel


def test_an_unknown_training_task_stops_the_run_before_it_starts(token_corpus, tmp_path, capsys):
    from model.cli import main
    assert main(["--corpus", str(token_corpus), "--out", str(tmp_path / "run"), *TRAIN,
                 "--eval-tasks", "no_such_task"]) == 2
    assert "unknown task(s) no_such_task" in capsys.readouterr().err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# ---------------------------------------------------------------- across runs

def test_compare_prints_each_runs_loss_and_newest_task_accuracy(two_runs, capsys):
    from model.cli import main
    plain, evaluated = two_runs
    assert main(["compare", str(plain), str(evaluated)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-1] == "elm_mc" and "elm_ppl" not in lines[0]  # perplexity is not an accuracy
    newest = run_records(evaluated, "eval")[-1]["tasks"]["elm_mc"]
    row = next(line for line in lines if line.startswith("evaluated"))
    last = run_records(evaluated, "train")[-1]
    assert f"{last['loss']:.4f}" in row and f"{100 * newest['acc_norm']:.2f}" in row
    assert next(line for line in lines if line.startswith("plain")).split()[-1] == "-"


def test_compare_shows_what_elm_train_eval_found_for_a_runs_checkpoint(two_runs, tasks_dir, tmp_path, capsys):
    import shutil
    from model.cli import main
    run = shutil.copytree(two_runs[0], tmp_path / "plain")  # trained without tasks
    assert main(["eval", str(run), "--tasks", "elm_mc", "--include-path", str(tasks_dir), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    printed = next(line for line in out.splitlines() if line.startswith("elm_mc")).split()[5]  # acc_norm, in %
    recorded = json.loads((run / "evals" / "step_00000006.json").read_text())
    assert f"recorded for elm-train compare: {run / 'evals' / 'step_00000006.json'}" in out
    assert recorded["step"] == 6 and recorded["tokens"] == run_records(run, "train")[-1]["tokens"]
    assert main(["compare", str(run), "--report", str(tmp_path / "report")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-1] == "elm_mc" and lines[1].split()[-1] == printed != "-"
    saved = json.loads((tmp_path / "report" / "compare.json").read_text())
    assert f"{100 * saved[0]['tasks']['elm_mc']:.2f}" == printed and saved[0]["tasks_at_tokens"] == recorded["tokens"]
    assert item_scores(recorded)["elm_mc"].mean("bpb") == pytest.approx(recorded["tasks"]["elm_mc"]["bpb"])
    assert main(["compare", str(run), "--metric", "bpb"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[-1] == f"{recorded['tasks']['elm_mc']['bpb']:.4f}"


def test_compare_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    from model.cli import main
    assert main(["compare", str(tmp_path)]) == 2
    assert "no training records" in capsys.readouterr().err


def test_compare_report_opens_in_headless_chromium_with_its_charts_and_nothing_from_outside(two_runs, tmp_path,
                                                                                          chromium):
    from browser import console_errors, requested_urls

    from model.cli import main
    from model.eval.compare import CHARTS
    assert main(["compare", *map(str, two_runs), "--report", str(tmp_path / "report")]) == 0
    page = tmp_path / "report" / "index.html"
    saved = json.loads((tmp_path / "report" / "compare.json").read_text())
    assert [s["name"] for s in saved] == ["plain", "evaluated"] and saved[1]["tasks"]
    seen = chromium.load(page)
    images = {i["figure"]: i for i in seen["dom"]["images"]}
    assert set(images) == {name.removesuffix(".png") for name in CHARTS}
    assert all(i["complete"] and i["width"] > 300 for i in images.values())
    assert console_errors(seen["events"]) == []
    assert all(url.startswith("file://") for url in requested_urls(seen["events"]))


# ---------------------------------------------------------------- lm-eval's own hf backend on an export

def test_lm_evals_hf_backend_on_the_export_gives_the_same_accuracy(model_dir, tasks_dir, tmp_path):
    pytest.importorskip("accelerate", reason="lm-eval's hf backend imports accelerate (pyproject installs it)")
    from lm_eval import simple_evaluate

    from corpus.tasks.manager import task_manager_for
    from model.export import export
    folder = export(model_dir, tmp_path / "hf", fmt="hf")
    ours = evaluate(folder, "elm_mc", include_path=str(tasks_dir), device="cpu", batch_size=4)
    theirs = simple_evaluate(model="hf", model_args={"pretrained": str(folder), "trust_remote_code": True,
                                                     "add_bos_token": True, "dtype": "float32"},
                             tasks=["elm_mc"], task_manager=task_manager_for(["elm_mc"], str(tasks_dir)),
                             batch_size=4, device="cpu", log_samples=False, bootstrap_iters=100)
    mine, hf = ours.results["results"]["elm_mc"], theirs["results"]["elm_mc"]
    assert (mine["acc,none"], mine["acc_norm,none"]) == (hf["acc,none"], hf["acc_norm,none"])


@pytest.mark.parametrize("limit", ["0", "0.5", "-3", "ten"])
def test_limit_must_be_a_positive_integer_said_in_one_line(model_dir, limit, capsys):
    from model.cli import main
    assert main(["eval", str(model_dir), "--tasks", "elm_mc", "--limit", limit]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"elm-train eval: error: --limit must be a positive integer (examples per task), got {limit!r}"
