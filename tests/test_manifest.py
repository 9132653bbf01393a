"""The manifest is validated at the edge: every problem names file, line and field."""
from pathlib import Path

import pytest

from corpus.manifest import (Manifest, ManifestError, load_manifest, parse_manifest, parse_token_count)

OPENELM = Path(__file__).resolve().parents[1] / "manifests" / "openelm.yaml"
FINEWEB_EDU_STACK_MATH = OPENELM.with_name("fineweb-edu-stack-math.yaml")

GOOD = """\
name: tiny
sources:
  - name: web
    group: refinedweb
    upstream:
      files: ["data/web/*.parquet"]
    format: parquet
    text_field: content
    tokens: 3B
  - name: books
    group: redpajama
    upstream:
      list: https://example.org/urls.txt
      match: "/book/"
    format: jsonl
    tokens: 1B
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ManifestError) as e:
        parse_manifest(text, "manifests/x.yaml")
    return e.value.problems


def test_openelm_manifest_has_the_thirteen_subsets_of_the_paper():
    m = load_manifest(OPENELM)
    assert len(m.sources) == 13
    assert {s.group for s in m.sources} == {"refinedweb", "redpajama", "pile", "dolma"}
    assert [s.name for s in m.sources if s.group == "redpajama"] == [
        "redpajama-github", "redpajama-books", "redpajama-arxiv", "redpajama-wikipedia",
        "redpajama-stackexchange", "redpajama-c4"]
    assert len([s for s in m.sources if s.group == "dolma"]) == 5
    assert 1.75e12 < m.total_tokens < 1.8e12
    assert m.source("refinedweb").tokens == 665 * 10**9 and m.source("refinedweb").files == 5534
    assert m.source("dolma-wiki").tokens == 4_300_000_000
    assert m.source("refinedweb").text_field == "content" and m.source("refinedweb").format == "parquet"
    assert m.source("dolma-stack").format == "json.gz"


def test_openelm_manifest_carries_corenet_text_rules():
    t = load_manifest(OPENELM).text
    assert (t.normalize, t.split_words, t.min_chars, t.min_tokens, t.add_bos, t.add_eos) == \
        ("NFC", 2048, 200, 256, True, True)


def test_target_shares_follow_token_counts_unless_weights_are_given():
    m = parse_manifest(GOOD)
    assert m.target_shares() == pytest.approx({"web": 0.75, "books": 0.25})
    weighted = parse_manifest(GOOD.replace("    tokens: 1B\n", "    tokens: 1B\n    weight: 3e9\n"))
    assert weighted.target_shares() == pytest.approx({"web": 0.5, "books": 0.5})


@pytest.mark.parametrize("text,count", [("665B", 665 * 10**9), ("4.3B", 4_300_000_000), ("250M", 250_000_000),
                                        ("1.8T", 1_800_000_000_000), ("12k", 12_000), (1200, 1200)])
def test_token_counts_are_written_as_the_paper_does(text, count):
    assert parse_token_count(text) == count


def test_bad_token_count_names_file_line_and_field():
    assert problems(GOOD.replace("tokens: 1B", "tokens: 6X")) == [
        "manifests/x.yaml:16: sources[1].tokens: '6X' is not a token count "
        "(write e.g. 665B, 4.3B, 250M or an integer)"]


def test_missing_field_names_the_entry_that_lacks_it():
    assert problems(GOOD.replace("    format: jsonl\n", "")) == [
        "manifests/x.yaml:10: sources[1].format: required field is missing"]


def test_unknown_key_is_rejected_with_its_line():
    assert problems(GOOD.replace("    text_field: content\n", "    text_feild: content\n")) == [
        "manifests/x.yaml:8: sources[0].text_feild: unknown key"]


def test_wrong_type_names_the_value():
    out = problems(GOOD.replace("name: tiny\n", "name: tiny\nseed: many\n"))
    assert out == ["manifests/x.yaml:2: seed: 'many': Input should be a valid integer, "
                   "unable to parse string as an integer"]


def test_bad_group_and_unknown_format_are_listed_together():
    out = problems(GOOD.replace("group: redpajama", "group: Red Pajama").replace("format: jsonl", "format: csv"))
    assert out[0].startswith("manifests/x.yaml:11: sources[1].group: 'Red Pajama' is not a group name")
    assert out[1].startswith("manifests/x.yaml:15: sources[1].format: 'csv': Input should be")


@pytest.mark.parametrize("group", ["web", "code", "math", "redpyjama", "my-family_2", '"2024"', "a" * 64])
def test_any_group_name_is_accepted(group):
    m = parse_manifest(GOOD.replace("group: redpajama", f"group: {group}"))
    assert m.source("books").group == group.strip('"')


@pytest.mark.parametrize("group,why", [
    ("Web", "'Web' is not a group name"), ("web text", "'web text' is not a group name"),
    ("-web", "'-web' is not a group name"), ('""', "'' is not a group name"), ("", "None is not a group name"),
    ("a" * 65, f"'{'a' * 65}' is not a group name"), ("[web]", "['web'] is not a group name"),
    ("2024", "2024 is read as a number: quote it to make it a group name")])
def test_a_bad_group_name_is_refused_naming_its_line(group, why):
    out = problems(GOOD.replace("group: redpajama", f"group: {group}"))
    assert len(out) == 1 and out[0].startswith(f"manifests/x.yaml:11: sources[1].group: {why}"), out
    if "not a group name" in why:
        assert out[0].endswith("use 1 to 64 lowercase letters, digits, '-' or '_', starting with a letter or digit "
                               "(e.g. web, code, redpajama)")


def test_second_manifest_mixes_web_code_and_math_by_explicit_weights():
    m = load_manifest(FINEWEB_EDU_STACK_MATH)
    assert [(s.name, s.group, s.format, s.text_field) for s in m.sources] == [
        ("fineweb-edu", "web", "parquet", "text"), ("the-stack-dedup-python", "code", "parquet", "content"),
        ("open-web-math", "math", "parquet", "text")]
    assert m.target_shares() == pytest.approx({"fineweb-edu": 0.70, "the-stack-dedup-python": 0.15,
                                               "open-web-math": 0.15})
    assert all(f.startswith("hf://datasets/") for s in m.sources for f in s.upstream.files)
    assert (m.tokenizer, m.text) == (load_manifest(OPENELM).tokenizer, load_manifest(OPENELM).text)


def test_upstream_needs_exactly_one_of_files_or_list():
    out = problems(GOOD.replace('      files: ["data/web/*.parquet"]\n', '      match: "/web/"\n'))
    assert out[0].startswith("manifests/x.yaml:5: sources[0].upstream: ")
    assert "exactly one of 'files'" in out[0]


def test_duplicate_source_names_are_refused():
    out = problems(GOOD.replace("name: books", "name: web"))
    assert out == ["manifests/x.yaml:2: sources: source name 'web' appears twice"]


def test_unreadable_yaml_names_the_line():
    out = problems("name: x\nsources:\n  - name: [a\n    group: pile\n")
    assert len(out) == 1 and out[0].startswith("manifests/x.yaml:4: (yaml): not valid YAML")


def test_manifest_must_be_a_mapping():
    assert problems("- a\n- b\n") == ["manifests/x.yaml:1: (top level): a manifest is a mapping of keys, got list"]


def test_missing_manifest_file_is_named(tmp_path):
    with pytest.raises(ManifestError, match="no such manifest file"):
        load_manifest(tmp_path / "nope.yaml")


def test_fingerprint_changes_with_rules_sources_and_tokenizer_but_not_weights():
    m = parse_manifest(GOOD)
    fp = m.build_fingerprint("tok-a")
    assert fp == parse_manifest(GOOD).build_fingerprint("tok-a")
    assert fp != m.build_fingerprint("tok-b")
    assert fp != parse_manifest(GOOD + "text: {min_chars: 100}\n").build_fingerprint("tok-a")
    assert fp != parse_manifest(GOOD.replace("/book/", "/books/")).build_fingerprint("tok-a")
    assert fp == parse_manifest(GOOD.replace("    tokens: 1B\n", "    tokens: 1B\n    weight: 2\n")
                                ).build_fingerprint("tok-a")


def test_dumped_manifest_validates_back_to_the_same_manifest():
    m = load_manifest(OPENELM)
    again = Manifest.model_validate(m.model_dump(by_alias=True))
    assert again.model_copy(update={"path": m.path}) == m


def test_validate_into_a_closed_pipe_exits_without_blaming_the_network():
    import subprocess
    import sys
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "validate", "manifests/openelm.yaml"], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # as `| head -0` would
    err = proc.stderr.read().decode()
    assert proc.wait() == 1 and "network" not in err and "Traceback" not in err


def test_a_manifest_whose_weights_are_all_zero_is_refused_and_builds_nothing(tmp_path, capsys, monkeypatch):
    import re
    from pipelines.cli import main
    text = OPENELM.read_text()
    zeroed = re.sub(r"(\n    tokens: [^\n]+)", r"\1\n    weight: 0", text)
    assert zeroed.count("weight: 0") == 13
    path = tmp_path / "zero.yaml"
    path.write_text(zeroed)
    monkeypatch.setenv("ELM_CORPUS_DATA", str(tmp_path / "data"))
    assert main(["validate", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "is valid" not in err and "every source's weight is zero" in err
    assert f"{path}:" in err
    assert main(["build", str(path), "--sample"]) == 2
    assert "every source's weight is zero" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()
