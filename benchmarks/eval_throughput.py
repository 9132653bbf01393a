"""Requests per second of `elm-train eval` against lm-eval's own `hf` backend, same export, same task, one run.

    .venv/bin/python benchmarks/eval_throughput.py                      # tiny, 300 questions x 4 choices
    .venv/bin/python benchmarks/eval_throughput.py --num-fewshot 5          # longer contexts, as OpenELM's tables
    .venv/bin/python benchmarks/eval_throughput.py --preset small --questions 100

The model is a preset with seeded random weights, exported to the Hugging Face layout by
`elm-train export --format hf` (the folder carries its own modeling code, loaded by lm-eval's
`hf` backend with `trust_remote_code=True`). The task is a local multiple-choice task in
lm-eval's YAML: each question is the start of a King James verse and its choices are the true
ending and the endings of three other verses, so requests differ in length as real ones do.
Both backends answer the same requests with BOS and the same batch size; the kinds take turns,
each round times a whole evaluation (model loading included) after an untimed warm-up of both,
and the medians of the rounds are compared. The
accuracies must agree (the two must give the same answers), or the run fails.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from corpus.mirror.text import kjv_chapters  # noqa: E402
from corpus.tokenizer.tokenizer import default_model_path  # noqa: E402
from model.export import export  # noqa: E402
from model.hf_folder import write_hf_folder  # noqa: E402
from model.openelm import OpenELM  # noqa: E402
from model.presets import get_preset  # noqa: E402


def verse_questions(n: int, seed: int = 0) -> list[dict]:
    """Questions from real sentences of the KJV: the first half of one, its true second half and three others'."""
    sentences = (s.strip() for c in kjv_chapters() for s in re.split(r"(?<=[.?!])\s+", c.text))
    verses = [s for s in sentences if 12 <= len(s.split()) <= 40]
    rng = random.Random(seed)
    picked = rng.sample(verses, n + 3 * n)
    rows = []
    for i in range(n):
        words = picked[i].split()
        cut = len(words) // 2
        endings = [" ".join(words[cut:])] + [" ".join(v.split()[len(v.split()) // 2:])
                                             for v in picked[n + 3 * i:n + 3 * i + 3]]
        answer = rng.randrange(4)
        endings[0], endings[answer] = endings[answer], endings[0]
        rows.append({"question": " ".join(words[:cut]), "choices": endings, "answer": answer})
    return rows


def write_task(folder: Path, rows: list[dict]) -> None:
    data = folder / "bench_mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "bench_mc.yaml").write_text(
        f"task: bench_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--questions", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--num-fewshot", type=int, default=0, help="few-shot examples before each question (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from corpus.tasks.manager import go_offline_unless_hub_reachable
    go_offline_unless_hub_reachable()
    from lm_eval import simple_evaluate

    from corpus.tasks.manager import task_manager_for
    from model.eval.harness import evaluate

    work = Path(tempfile.mkdtemp(prefix="eval-bench-"))
    try:
        torch.manual_seed(0)
        config = get_preset(args.preset)
        weights = write_hf_folder(work / "weights", config, OpenELM(config).state_dict())
        shutil.copy(default_model_path(), weights / "tokenizer.model")
        folder = export(weights, work / "export", fmt="hf")
        tasks = work / "tasks"
        tasks.mkdir()
        write_task(tasks, verse_questions(args.questions))
        requests = 4 * args.questions
        # Both sides find the task in one index built beforehand (lm-eval's own ~14,000 task files take seconds to
        # index, which would only blur what is measured: answering the requests).
        manager = task_manager_for(["bench_mc"], str(tasks))

        def ours() -> dict:
            return evaluate(folder, "bench_mc", include_path=str(tasks), batch_size=args.batch_size, device="cpu",
                            num_fewshot=args.num_fewshot).results["results"]["bench_mc"]

        def theirs() -> dict:
            out = simple_evaluate(model="hf", model_args={"pretrained": str(folder), "trust_remote_code": True,
                                                          "add_bos_token": True, "dtype": "float32"},
                                  tasks=["bench_mc"], task_manager=manager, batch_size=args.batch_size, device="cpu",
                                  num_fewshot=args.num_fewshot,
                                  log_samples=False, bootstrap_iters=1000)
            return out["results"]["bench_mc"]

        seconds: dict[str, list[float]] = {"elm-train eval": [], "lm-eval hf": []}
        answers = {}
        ours(), theirs()  # warm-up, untimed: imports, the dataset's cache, transformers' copy of the remote code
        for r in range(args.rounds):
            for name, run in (("elm-train eval", ours), ("lm-eval hf", theirs)):
                started = time.perf_counter()
                row = run()
                seconds[name].append(time.perf_counter() - started)
                answers[name] = (row["acc,none"], row["acc_norm,none"])
                print(f"round {r + 1}: {name:<15} {requests / seconds[name][-1]:8.1f} requests/s  "
                      f"acc {row['acc,none']:.4f} acc_norm {row['acc_norm,none']:.4f}", flush=True)
        if answers["elm-train eval"] != answers["lm-eval hf"]:
            print(f"FAIL: the backends disagree: {answers}")
            return 1
        rates = {k: requests / statistics.median(v) for k, v in seconds.items()}
        ratio = rates["elm-train eval"] / rates["lm-eval hf"]
        print(f"\n{args.preset}, {args.questions} questions x 4 choices = {requests} requests, {args.num_fewshot}-shot, "
              f"batch {args.batch_size}, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads, medians of {args.rounds} rounds")
        print("| backend | requests/s (median) | per round |\n|---|---|---|")
        for name, values in seconds.items():
            print(f"| {name} | {rates[name]:.1f} | {', '.join(f'{requests / v:.1f}' for v in values)} |")
        print(f"| elm-train eval / lm-eval hf | {ratio:.2f}x | target >= 2x: {'met' if ratio >= 2 else 'NOT met'} |")
        print(f"same answers: acc {answers['elm-train eval'][0]:.4f}, acc_norm {answers['elm-train eval'][1]:.4f}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
