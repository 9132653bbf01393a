"""What the evaluation tests share: a small OpenELM folder with seeded random weights, and local tasks in
lm-eval's own YAML (multiple choice in two shapes, rolling log-likelihood, generation) with their json data."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from lm_eval.api.instance import Instance

from corpus.tokenizer.tokenizer import default_model_path
from model.config import OpenELMConfig
from model.hf_folder import write_hf_folder
from model.openelm import OpenELM

CONTEXT = 48  # the model's context: long requests are cut on the left
QUESTIONS = [
    ("In the beginning God created the heaven and the", ["earth", "sea", "fire", "bread"], 0),
    ("And God said, Let there be", ["light", "stones", "wine", "rain"], 0),
    ("The quick brown fox jumps over the lazy", ["dog", "river", "king", "cloud"], 0),
    ("def add(a, b):\n    return a +", [" b", " a", " 1", " None"], 0),
    ("Two plus two is", [" four", " five", " seven", " nine"], 0),
    ("The capital of France is", [" Paris", " Rome", " Oslo", " Lima"], 0),
]
TEXTS = ["Blessed are the meek: for they shall inherit the earth.",
         "import os\nprint(os.getcwd())\n" * 12]   # longer than two contexts: scored in three windows
PROMPTS = [("Numbers: one, two,", " three"), ("Colours: red, green,", " blue")]
# Winogrande's shape: each option fills the blank, making a context of its own; the rest of the sentence is the
# continuation they share. `answer` names the gold option (1 or 2).
FILLS = [("The trophy did not fit in the suitcase because the _ was too large.", "trophy", "suitcase", "1"),
         ("Anna poured water from the jug into the glass until the _ was full.", "jug", "glass", "2")]


def write_model(folder: Path) -> Path:
    """A 2-layer OpenELM of CONTEXT tokens, seeded random weights, tokenizer.model beside them."""
    torch.manual_seed(0)
    config = OpenELMConfig(num_transformer_layers=2, model_dim=64, head_dim=16, ffn_dim_divisor=32,
                           max_context_length=CONTEXT, rope_max_length=512)
    folder = write_hf_folder(folder, config, OpenELM(config).state_dict())
    shutil.copy(default_model_path(), folder / "tokenizer.model")
    return folder


def write_tasks(root: Path, names: tuple[str, ...] = ("elm_mc", "elm_ppl", "elm_gen", "elm_fill")) -> Path:
    """The local tasks named, each a YAML and its json lines under `root`."""
    bodies = {
        "elm_mc": ([{"question": q, "choices": c, "answer": a} for q, c, a in QUESTIONS],
                   "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
                   "doc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n"),
        "elm_ppl": ([{"text": t} for t in TEXTS],
                    "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
                    "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n"
                    "  - metric: bits_per_byte\n"),
        "elm_gen": ([{"prompt": p, "target": t} for p, t in PROMPTS],
                    "output_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{target}}'\n"
                    "generation_kwargs:\n  until: ['\\n', ',']\n  max_gen_toks: 8\n  do_sample: false\n"
                    "metric_list:\n  - metric: exact_match\n"),
        "elm_fill": ([{"sentence": t, "option1": a, "option2": b, "answer": g} for t, a, b, g in FILLS],
                     "output_type: multiple_choice\n"
                     "doc_to_text: \"{{ (answer | int) - 1 }}\"\n"
                     "doc_to_choice: \"{{ [sentence.split('_')[0] + option1, sentence.split('_')[0] + option2] }}\"\n"
                     "doc_to_target: \"{{ sentence.split('_')[1].strip() }}\"\nmetric_list:\n  - metric: acc\n"),
    }
    for name in names:
        rows, body = bodies[name]
        data = root / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        (root / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"test_split: test\n{body}")
    return root


def requests(kind: str, args: list[tuple]) -> list[Instance]:
    """Harness requests of one kind, as lm-eval hands them to an LM."""
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]
