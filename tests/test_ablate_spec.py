"""The ablation spec is checked whole at the edge, and its identities say which builds and trials a rerun may reuse."""
from __future__ import annotations

from pathlib import Path

import pytest

from model.ablate.spec import (SET_BY_ABLATION, AblationSpecError, corpus_identity, identity_key, load_spec,
                               shared_builds, trial_identity)
from model.train.config import TrainConfig
from model.train.settings import settings_of

MANIFEST = """\
name: two-sources
text:
  min_chars: 100
sources:
  - name: web
    group: refinedweb
    upstream:
      files: ["data/web/*.parquet"]
    format: parquet
    tokens: 3B
  - name: books
    group: redpajama
    upstream:
      files: ["data/books/*.jsonl"]
    format: jsonl
    tokens: 1B
  - name: code
    group: redpajama
    upstream:
      files: ["data/code/*.jsonl"]
    format: jsonl
    tokens: 1B
"""

SPEC = """\
name: web-vs-books
model: tiny
steps: 20
seeds: [0, 1]
tasks: [arc_easy, piqa]
train:
  max_lr: 0.005
variants:
  - name: web-heavy
    manifest: manifests/two.yaml
    sample: true
    weights: {web: 3, books: 1}
  - name: books-heavy
    manifest: manifests/two.yaml
    sample: true
    weights: {web: 1, books: 3}
    train:
      micro_batch_size: 4
"""


def write_spec(folder: Path, text: str, manifest: str = MANIFEST) -> Path:
    (folder / "manifests").mkdir(parents=True, exist_ok=True)
    (folder / "manifests" / "two.yaml").write_text(manifest)
    (folder / "spec.yaml").write_text(text)
    return folder / "spec.yaml"


def problems(folder: Path, text: str) -> list[str]:
    with pytest.raises(AblationSpecError) as e:
        load_spec(write_spec(folder, text))
    return [p.split("spec.yaml", 1)[1] for p in e.value.problems]  # ':LINE: field: message'


def test_a_spec_loads_with_paths_relative_to_its_folder(tmp_path):
    spec = load_spec(write_spec(tmp_path / "ablations", SPEC))
    web, books = spec.variants
    assert spec.manifest_path(web) == (tmp_path / "ablations" / "manifests" / "two.yaml").resolve()
    assert [s.name for s in spec.manifest(web).sources] == ["web", "books", "code"]
    assert spec.task_list == ["arc_easy", "piqa"] and spec.aggregate == "bpb"
    assert spec.run_settings(books, seed=1) == {"max_lr": 0.005, "micro_batch_size": 4, "model": "tiny",
                                                "steps": 20, "seed": 1, "weights": {"web": 1.0, "books": 3.0}}


def test_task_sets_expand_to_their_lm_eval_tasks(tmp_path):
    spec = load_spec(write_spec(tmp_path, SPEC.replace("tasks: [arc_easy, piqa]", "tasks: openelm-zero-shot,piqa")))
    assert spec.task_list == ["arc_challenge", "arc_easy", "boolq", "hellaswag", "piqa", "sciq", "winogrande"]


def test_tokens_become_steps_of_each_variants_global_batch(tmp_path):
    text = SPEC.replace("steps: 20", "tokens: 10K").replace("micro_batch_size: 4", "global_batch_tokens: 2048")
    spec = load_spec(write_spec(tmp_path, text))
    web, books = spec.variants
    assert spec.steps_for(web) == 10      # 10,000 / 1,024 (tiny's batch), rounded up
    assert spec.steps_for(books) == 5     # 10,000 / 2,048
    assert spec.run_settings(books, 0)["steps"] == 5


def test_an_unknown_train_key_is_named_with_its_line(tmp_path):
    text = SPEC.replace("micro_batch_size: 4", "micro_batch: 4")
    assert problems(tmp_path, text) == [":18: variants[1].train.micro_batch: unknown run setting; did you mean "
                                        "'micro_batch_size'?"]
    [problem] = problems(tmp_path, SPEC.replace("micro_batch_size: 4", "xyz: 4"))
    assert problem.startswith(":18: variants[1].train.xyz: unknown run setting; known settings: activation_")


def test_a_setting_the_ablation_decides_is_refused_under_train_with_where_it_goes(tmp_path):
    text = SPEC.replace("  max_lr: 0.005", "  seed: 3")
    assert problems(tmp_path, text) == [":7: train.seed: set by the ablation, not under train: give it as the "
                                        "spec's `seeds`"]


def test_a_train_value_of_the_wrong_type_is_refused(tmp_path):
    [problem] = problems(tmp_path, SPEC.replace("max_lr: 0.005", "max_lr: fast"))
    assert problem.startswith(":7: train.max_lr: 'fast' is not a float")


def test_settings_that_make_no_run_are_refused_before_anything_is_built(tmp_path):
    [problem] = problems(tmp_path, SPEC.replace("micro_batch_size: 4", "micro_batch_size: 7"))
    assert problem.startswith(":17: variants[1].train: the run settings of variant 'books-heavy' do not make a run: "
                              "global_batch_tokens 1024 is not a multiple")


def test_every_problem_is_listed_at_once_with_its_line(tmp_path):
    text = """\
name: bad
model: huge
steps: 10
seeds: [0, 0]
tasks: []
variants:
  - name: a
    manifest: manifests/two.yaml
"""
    assert problems(tmp_path, text) == [
        ":2: model: 'huge' is not a model preset; choose one of tiny, small, openelm-270m, openelm-450m, "
        "openelm-1.1b, openelm-3b",
        ":4: seeds: seeds [0] appear more than once; each seed trains one proxy per variant",
        ":5: tasks: List should have at least 1 item after validation, not 0"]


def test_files_sources_and_names_are_checked_against_the_disk(tmp_path):
    text = """\
name: bad
model: tiny
steps: 10
seeds: [0]
tasks: piqa
include_path: tasks/
variants:
  - name: a
    manifest: manifests/two.yaml
    weights: {web: 1, news: 2}
  - name: a
    manifest: manifests/missing.yaml
"""
    found = problems(tmp_path, text)
    assert found[:3] == [":6: include_path: 'tasks/': no such folder (relative to the spec's folder)",
                         ":10: variants[0].weights.news: 'news' is not a source of manifests/two.yaml (two-sources); "
                         "its sources: web, books, code",
                         ":11: variants[1].name: 'a' is the name of variants[0] too"]
    assert found[3].startswith(":12: variants[1].manifest: 'manifests/missing.yaml' cannot be used: ")
    assert found[3].endswith("missing.yaml:0: (file): no such manifest file")


def test_steps_and_tokens_are_one_or_the_other(tmp_path):
    assert problems(tmp_path, SPEC.replace("steps: 20", "steps: 20\ntokens: 1M")) == [
        ":1: (top level): give exactly one of 'steps' (optimizer steps) or 'tokens' (tokens per trial)"]
    assert problems(tmp_path, SPEC.replace("steps: 20\n", "")) == [
        ":1: (top level): give exactly one of 'steps' (optimizer steps) or 'tokens' (tokens per trial)"]


def test_a_seed_is_an_integer_and_a_metric_to_rank_by_is_one_the_report_knows(tmp_path):
    text = SPEC.replace("seeds: [0, 1]", "seeds: [0, true]").replace("tasks:", "aggregate: ppl\ntasks:")
    assert problems(tmp_path, text) == [":4: seeds[1]: True: Input should be a valid integer",
                                        ":5: aggregate: 'ppl': Input should be 'acc', 'acc_norm' or 'bpb'"]


def test_two_variants_that_would_train_the_same_proxies_are_refused(tmp_path):
    text = SPEC.replace("weights: {web: 1, books: 3}", "weights: {web: 6, books: 2, code: 0}").replace(
        "    train:\n      micro_batch_size: 4\n", "")
    assert problems(tmp_path, text) == [":13: variants[1]: variant 'books-heavy' trains the same proxies as "
                                        "'web-heavy' (same corpus, mixture and settings); drop one or change what "
                                        "it tests"]


def test_the_settings_the_ablation_decides_are_settings_of_a_training_run():
    assert set(SET_BY_ABLATION) <= {s.name for s in settings_of(TrainConfig)}


def test_variants_that_differ_only_in_weights_share_one_build(tmp_path):
    text = SPEC + """\
  - name: full-mirror
    manifest: manifests/two.yaml
    sample: false
"""
    spec = load_spec(write_spec(tmp_path, text))
    web, books, upstream = spec.variants
    assert corpus_identity(spec, web) == corpus_identity(spec, books)
    assert corpus_identity(spec, web) != corpus_identity(spec, upstream)
    assert list(shared_builds(spec).values()) == [["web-heavy", "books-heavy"], ["full-mirror"]]


def test_a_change_to_what_the_build_reads_is_another_corpus(tmp_path):
    before = load_spec(write_spec(tmp_path, SPEC))
    after = load_spec(write_spec(tmp_path, SPEC, MANIFEST.replace("min_chars: 100", "min_chars: 300")))
    reweighted = load_spec(write_spec(tmp_path, SPEC, MANIFEST.replace("tokens: 3B", "tokens: 3B\n    weight: 9")))
    web = before.variants[0]
    assert corpus_identity(before, web) != corpus_identity(after, after.variants[0])
    assert corpus_identity(before, web) == corpus_identity(reweighted, reweighted.variants[0])


def test_a_trial_keeps_its_identity_across_loads_and_when_a_variant_is_added(tmp_path):
    first = load_spec(write_spec(tmp_path, SPEC))
    keys = {(v.name, s): identity_key(trial_identity(first, v, s)) for v in first.variants for s in first.seeds}
    grown = load_spec(write_spec(tmp_path, SPEC + "  - name: code-too\n    manifest: manifests/two.yaml\n"
                                                 "    sample: true\n    weights: {web: 1, code: 1}\n"))
    assert {(v.name, s): identity_key(trial_identity(grown, v, s)) for v in grown.variants[:2]
            for s in grown.seeds} == keys
    assert len(set(keys.values())) == 4  # each variant and seed its own trial


def test_a_trial_identity_changes_with_what_trains_the_proxy_and_not_with_names(tmp_path):
    base = load_spec(write_spec(tmp_path, SPEC))
    key = identity_key(trial_identity(base, base.variants[0], 0))

    def key_after(old: str, new: str) -> str:
        spec = load_spec(write_spec(tmp_path, SPEC.replace(old, new, 1)))
        return identity_key(trial_identity(spec, spec.variants[0], 0))

    assert key_after("name: web-heavy", "name: web-first") == key
    assert key_after("name: web-vs-books", "name: renamed") == key
    assert key_after("weights: {web: 3, books: 1}", "weights: {web: 6, books: 2, code: 0}") == key  # same shares
    assert key_after("weights: {web: 3, books: 1}", "weights: {web: 2, books: 1}") != key
    assert key_after("max_lr: 0.005", "max_lr: 0.004") != key
    assert key_after("steps: 20", "steps: 21") != key
    assert key_after("model: tiny", "model: small") != key
    assert identity_key(trial_identity(base, base.variants[0], 1)) != key
