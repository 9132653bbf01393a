"""manifests/fineweb-edu-stack-math.yaml: a second public mix, with groups of its own, validates and builds
with `--sample` through the CLI, and `stats` sums it by those groups."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from corpus.mirror.mirror import iter_documents, read_index
from corpus.store.layout import read_corpus_json, source_shards
from pipelines.cli import main as cli_main

MANIFEST = Path(__file__).resolve().parent.parent / "manifests" / "fineweb-edu-stack-math.yaml"
SOURCES = {"fineweb-edu": "web", "the-stack-dedup-python": "code", "open-web-math": "math"}


@pytest.fixture(scope="module")
def built(tmp_path_factory, ray_session) -> dict:
    """`elm-corpus validate` then `elm-corpus build MANIFEST --sample` into a data folder of its own (its mirror
    under ``<data>/sample``, the corpus under ``<data>/corpora``), on the session's Ray."""
    data = tmp_path_factory.mktemp("second-manifest")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ELM_CORPUS_DATA", str(data))
        validated = cli_main(["validate", str(MANIFEST)])
        code = cli_main(["build", str(MANIFEST), "--sample", "--workers", "2", "--no-progress"])
    assert validated == 0 and code == 0
    return {"data": data, "mirror": data / "sample", "corpus": data / "corpora" / "fineweb-edu-stack-math-sample"}


def stats_json(target: Path, capsys) -> dict:
    capsys.readouterr()
    assert cli_main(["stats", str(target), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_sample_build_is_complete_and_every_source_has_tokens(built):
    index = read_corpus_json(built["corpus"])
    assert index["status"] == "complete" and index["sample"] is True and index["name"] == "fineweb-edu-stack-math"
    assert sorted(index["sources"]) == sorted(SOURCES)
    mirror = read_index(built["mirror"])["sources"]
    for name, src in index["sources"].items():
        t = src["totals"]
        assert src["group"] == SOURCES[name] and t["tokens"] > 10_000, name
        assert sum(len(s) for s in source_shards(built["corpus"], name)) == t["chunks_kept"] > 0, name
        assert t["documents_read"] == mirror[name]["records"] == t["kept"] + sum(t["dropped"].values()) + \
            t["quarantined"], name


def test_stats_sums_tokens_and_shares_by_the_manifests_own_groups(built, capsys):
    numbers = stats_json(built["corpus"], capsys)
    assert [s["group"] for s in numbers["sources"]] == list(SOURCES.values())
    groups = {g["name"]: g for g in numbers["groups"]}
    assert list(groups) == ["web", "code", "math"]
    tokens = {s["name"]: s["tokens"] for s in numbers["sources"]}
    for name, group in SOURCES.items():
        assert groups[group]["sources"] == [name] and groups[group]["tokens"] == tokens[name] > 0
        assert groups[group]["units"]["done"] == groups[group]["units"]["total"] > 0
    assert {k: g["share"]["target"] for k, g in groups.items()} == pytest.approx({"web": 0.7, "code": 0.15,
                                                                                  "math": 0.15})
    assert sum(g["share"]["achieved"] for g in groups.values()) == pytest.approx(1.0)
    assert sum(g["tokens"] for g in groups.values()) == numbers["total"]["tokens"]
    capsys.readouterr()
    assert cli_main(["stats", str(built["corpus"])]) == 0
    table = capsys.readouterr().out.split("tokens and mixture by group", 1)[1]
    assert all(f"│ {g} " in table for g in groups)


def test_the_mirror_has_each_upstreams_files_and_columns(built):
    root = built["mirror"]
    files = {name: [f["path"] for f in entry["files"]] for name, entry in read_index(root)["sources"].items()}
    assert files["fineweb-edu"][0] == "fineweb-edu/sample/100BT/000_00000.parquet"
    assert files["the-stack-dedup-python"][0] == "the-stack-dedup-python/data/python/data-00000-of-00003.parquet"
    assert files["open-web-math"][0].startswith("open-web-math/data/train-00000-of-00114-")
    columns = {name: pq.read_schema(root / paths[0]).names for name, paths in files.items()}
    assert columns["fineweb-edu"][:4] == ["text", "id", "dump", "url"] and "int_score" in columns["fineweb-edu"]
    assert {"hexsha", "content", "max_stars_repo_path", "max_stars_repo_licenses"} <= set(
        columns["the-stack-dedup-python"])
    assert columns["open-web-math"] == ["url", "text", "date", "metadata"]
    rows = pq.read_table(root / files["the-stack-dedup-python"][0]).to_pylist()
    for row in (r for r in rows if r["content"] is not None):  # hexsha is the file's git blob id, as upstream
        data = row["content"].encode()
        assert row["hexsha"] == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    code = [text for _, text in iter_documents(root, "the-stack-dedup-python")]
    assert sum(text.lstrip().startswith(('"""', "#", "import", "from")) for text in code) > 100  # real Python
