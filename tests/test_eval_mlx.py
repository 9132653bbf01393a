"""`elm-train eval --backend mlx`: an MLX export evaluated by the harness gives the torch backend's answers.

A small OpenELM with seeded random weights (a context of 48 tokens, so long contexts are cut) is
written as a Hugging Face-format folder and exported to MLX with `model.export`; the torch backend
runs on the first, the MLX backend (mlx-lm's model) on the second. MLX runs in this process, on
the CPU, without the OpenBLAS preload: the model is small enough for that.
"""
from __future__ import annotations

import json

import pytest

pytest.importorskip("mlx_lm")

import torch  # noqa: E402

from eval_data import CONTEXT, QUESTIONS, TEXTS, requests, write_model, write_tasks  # noqa: E402
from model.eval.harness import EvalError, evaluate, load_model  # noqa: E402
from model.eval.lm import OpenELMLM  # noqa: E402
from model.eval.mlx import MLXOpenELMLM, load_mlx_lm  # noqa: E402
from model.export import export  # noqa: E402
from model.source import SourceError  # noqa: E402

LONG_CONTEXT = " ".join(["And it was so."] * 20)   # longer than the model: cut on the left
PAIRS = [("And God said, Let there be", " light"), ("Two plus two is ", "four"),   # trailing space moves over
         (LONG_CONTEXT, " Amen"), ("", "Hello world")]
LONG_TEXT = TEXTS[1]   # three rolling windows


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(the Hugging Face-format folder, its MLX export): the same weights, tokenizer.model in both."""
    root = tmp_path_factory.mktemp("eval_mlx")
    hf = write_model(root / "model")
    return hf, export(hf, root / "mlx", fmt="mlx")


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    """The multiple-choice task of tests/test_eval.py."""
    return write_tasks(tmp_path_factory.mktemp("tasks_mlx"), ("elm_mc",))


@pytest.fixture(scope="module")
def both(folders):
    """A torch LM on the HF folder and an MLX LM on the export; make(bos) builds a pair."""
    hf, mlx_dir = folders
    model, tokenizer, _ = load_model(hf, device="cpu")

    def make(bos: bool, batch_size: int = 4):
        return (OpenELMLM(model, tokenizer, batch_size=batch_size, add_bos=bos),
                load_mlx_lm(mlx_dir, batch_size=batch_size, add_bos=bos, device="cpu")[0])
    return make


# ---------------------------------------------------------------- the harness on the local task

def test_mlx_and_torch_give_the_same_acc_acc_norm_and_bpb_on_the_local_multiple_choice_task(folders, tasks_dir):
    hf, mlx_dir = folders
    runs = {backend: evaluate(folder, "elm_mc", include_path=str(tasks_dir), device="cpu", batch_size=4,
                              log_samples=True, backend=backend)
            for backend, folder in (("torch", hf), ("mlx", mlx_dir))}
    torch_row, mlx_row = (runs[b].results["results"]["elm_mc"] for b in ("torch", "mlx"))
    assert mlx_row["acc,none"] == torch_row["acc,none"]
    assert mlx_row["acc_norm,none"] == torch_row["acc_norm,none"]
    assert mlx_row["bpb,none"] == pytest.approx(torch_row["bpb,none"], abs=1e-4)  # read alike from either backend
    assert runs["mlx"].results["items"]["elm_mc"]["bpb"] == pytest.approx(runs["torch"].results["items"]["elm_mc"]["bpb"],
                                                                         abs=1e-4)
    # Every request the harness made (4 choices x 6 questions), answered alike by both backends.
    samples = {b: sorted(runs[b].results["samples"]["elm_mc"], key=lambda s: s["doc_id"]) for b in runs}
    answers = {b: [r[0] for s in samples[b] for r in s["resps"]] for b in runs}
    assert len(answers["mlx"]) == 4 * len(QUESTIONS)
    assert [lp for lp, _ in answers["mlx"]] == pytest.approx([lp for lp, _ in answers["torch"]], abs=1e-3)
    assert [g for _, g in answers["mlx"]] == [g for _, g in answers["torch"]]
    config = runs["mlx"].results["config"]
    assert config["backend"] == "mlx" and config["device"] == "mlx:cpu" and config["add_bos_token"] is True
    assert runs["torch"].results["config"]["backend"] == "torch"


# ---------------------------------------------------------------- the LMs request by request

@pytest.mark.parametrize("bos", [True, False])
def test_log_likelihoods_equal_torch_within_1e_3_with_and_without_bos(both, bos):
    torch_lm, mlx_lm = both(bos)
    assert isinstance(mlx_lm, MLXOpenELMLM) and mlx_lm.max_length == CONTEXT
    got = mlx_lm.loglikelihood(requests("loglikelihood", PAIRS), disable_tqdm=True)
    expected = torch_lm.loglikelihood(requests("loglikelihood", PAIRS), disable_tqdm=True)
    assert [lp for lp, _ in got] == pytest.approx([lp for lp, _ in expected], abs=1e-3)
    assert [g for _, g in got] == [g for _, g in expected]
    whole = mlx_lm.tok_encode(PAIRS[2][0]) + mlx_lm.tok_encode(PAIRS[2][1], add_special_tokens=False)
    assert len(whole) > CONTEXT + 1   # so that request was cut on the left by both


def test_bos_is_on_by_default_and_changes_the_answers(folders, both):
    default = load_mlx_lm(folders[1], device="cpu")[0]
    with_bos, without = both(True)[1], both(False)[1]
    pair = requests("loglikelihood", PAIRS[:1])
    assert default.add_bos and default.tok_encode("And")[0] == default.prefix_token_id
    assert without.tok_encode("And")[0] != without.prefix_token_id
    (a, _), = default.loglikelihood(pair, disable_tqdm=True)
    (b, _), = with_bos.loglikelihood(pair, disable_tqdm=True)
    (c, _), = without.loglikelihood(pair, disable_tqdm=True)
    assert a == b and abs(a - c) > 1e-3


def test_is_greedy_matches_torch_for_the_argmax_continuation(both):
    torch_lm, mlx_lm = both(True)
    context = mlx_lm.tok_encode("In the beginning")
    greedy = []
    for _ in range(3):
        with torch.no_grad():
            greedy.append(int(torch_lm.model(torch.tensor([context + greedy]))[0, -1].argmax()))
    other = greedy[:2] + [(greedy[2] + 1) % 32000]
    got = mlx_lm._loglikelihood_tokens([(None, context, greedy), (None, context, other)])
    assert [g for _, g in got] == [True, False]


def test_batched_mlx_answers_equal_answers_one_at_a_time(both):
    pairs = requests("loglikelihood", [(q, " " + c) for q, choices, _ in QUESTIONS for c in choices])
    batched = both(True, batch_size=5)[1].loglikelihood(pairs, disable_tqdm=True)
    single = both(True, batch_size=1)[1].loglikelihood(pairs, disable_tqdm=True)
    assert [lp for lp, _ in batched] == pytest.approx([lp for lp, _ in single], abs=1e-5)


def test_rolling_log_likelihood_and_generation_equal_torch(both):
    torch_lm, mlx_lm = both(True)
    (got,) = mlx_lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(LONG_TEXT,)]), disable_tqdm=True)
    (expected,) = torch_lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(LONG_TEXT,)]),
                                                 disable_tqdm=True)
    assert got == pytest.approx(expected, abs=1e-3)
    gen = requests("generate_until", [("Numbers: one, two,", {"until": [], "max_gen_toks": 10}),
                                      ("Colours: red, green,", {"until": ["\n", ","], "max_gen_toks": 10})])
    free = torch_lm.generate_until(gen[:1], disable_tqdm=True)[0]
    assert free and mlx_lm.generate_until(gen, disable_tqdm=True) == torch_lm.generate_until(gen, disable_tqdm=True)


# ---------------------------------------------------------------- the command line

def test_cli_backend_mlx_with_no_bos_writes_the_results_json(folders, tasks_dir, tmp_path, capsys):
    from model.cli import main
    out = tmp_path / "results.json"
    assert main(["eval", str(folders[1]), "--backend", "mlx", "--tasks", "elm_mc", "--include-path", str(tasks_dir),
                 "--no-bos", "--limit", "3", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert {"acc,none", "acc_norm,none"} <= set(written["results"]["elm_mc"])
    assert written["config"]["backend"] == "mlx" and written["config"]["add_bos_token"] is False
    assert next(line for line in capsys.readouterr().out.splitlines() if line.startswith("elm_mc"))


def test_cli_backend_mlx_refuses_a_torch_device_and_a_folder_that_is_not_openelm(folders, tmp_path, capsys):
    from model.cli import main
    assert main(["eval", str(folders[1]), "--backend", "mlx", "--tasks", "elm_mc", "--device", "cuda"]) == 2
    assert "--device 'cuda' does not apply to --backend mlx" in capsys.readouterr().err
    other = tmp_path / "llama"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(SourceError, match="model_type is 'llama', not 'openelm'"):
        evaluate(other, "elm_mc", backend="mlx", device="cpu")
    with pytest.raises(EvalError, match="--backend must be one of torch, mlx"):
        evaluate(folders[1], "elm_mc", backend="jax")
