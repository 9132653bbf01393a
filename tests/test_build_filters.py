"""Extra datatrove filters a source declares: each runs on real text and counts its drops under its own name."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from corpus.manifest import FILTER_TYPES
from corpus.store.layout import read_corpus_json
from pipelines.build import build

LICENSES = Path("/usr/share/common-licenses")  # English prose that ships with Debian's base-files
STDLIB = Path(json.__file__).parent.parent


def real_documents() -> list[str]:
    """Licence prose that every filter keeps some of, plus Python files that C4 and language ID drop."""
    prose = [(LICENSES / name).read_text() for name in ("Apache-2.0", "MPL-2.0", "GPL-3")]
    code = [(STDLIB / name).read_text() for name in ("py_compile.py", "reprlib.py")]
    return prose + code


def filtered_source(kind: str, path: Path, params: str = "") -> str:
    return (f"  - name: {kind.replace('_', '-')}\n    group: redpajama\n    upstream: {{files: [\"{path}\"]}}\n"
            f"    format: jsonl\n    tokens: 1M\n    filters:\n      - type: {kind}\n{params}")


@pytest.fixture(scope="module")
def filtered(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("filters")
    data = root / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in real_documents()))
    manifest = root / "filters.yaml"
    manifest.write_text("name: filtered\nsources:\n" + "".join(filtered_source(k, data) for k in FILTER_TYPES))
    return build(manifest, root / "out", workers=2, progress=False)


@pytest.mark.parametrize("kind", FILTER_TYPES)
def test_each_declared_filter_drops_some_chunks_under_its_own_reason(filtered, kind):
    assert filtered.status == "complete", filtered.failed
    totals = read_corpus_json(filtered.out_dir)["sources"][kind.replace("_", "-")]["totals"]
    assert totals["chunks_dropped"].get(kind, 0) > 0
    assert totals["chunks_kept"] > 0
    assert sum(n for k, n in totals["drop_details"].items() if k.startswith(f"{kind}:")) == totals["chunks_dropped"][kind]
    assert totals["documents_read"] == totals["kept"] + sum(totals["dropped"].values()) + totals["quarantined"]


@pytest.mark.parametrize("kind", FILTER_TYPES)
def test_each_filter_keeps_exactly_the_chunks_its_datatrove_rule_keeps(filtered, kind):
    """The chunks in the shards are those the build's length rules pass and datatrove's filter, called directly on
    each chunk's text, keeps: the same token ids in the same order; the drops are the ones it rejects."""
    from datatrove.data import Document
    from corpus.manifest import ExtraFilter, TextRules
    from corpus.store.layout import CorpusDir
    from corpus.text.filters import build_filters
    from corpus.text.rules import CoreNetRules
    from corpus.tokenizer.tokenizer import Tokenizer
    rules, tokenizer = CoreNetRules(TextRules()), Tokenizer()
    datatrove_step = build_filters([ExtraFilter(type=kind)])[0].step
    kept, rejected = [], 0
    for document in real_documents():
        for chunk in rules.split(rules.normalize(document)):
            ids = tokenizer.encode_one(chunk, bos=True, eos=True) if rules.has_enough_chars(chunk) else []
            if not ids or not rules.has_enough_tokens(ids):
                continue
            verdict = datatrove_step.filter(Document(text=chunk, id=""))
            if (verdict[0] if isinstance(verdict, tuple) else verdict):
                kept.append(ids)
            else:
                rejected += 1
    shards = CorpusDir(filtered.out_dir).source_shards(kind.replace("_", "-"))
    served = [shard.chunk(i).tolist() for shard in shards for i in range(len(shard))]
    assert served == kept and rejected > 0
    totals = read_corpus_json(filtered.out_dir)["sources"][kind.replace("_", "-")]["totals"]
    assert totals["chunks_dropped"][kind] == rejected


def test_a_filter_with_unknown_params_is_refused_before_any_work(tmp_path, ray_session):
    data = tmp_path / "docs.jsonl"
    data.write_text(json.dumps({"text": "x"}) + "\n")
    manifest = tmp_path / "m.yaml"
    manifest.write_text("name: bad\nsources:\n" + filtered_source("gopher_quality", data, "        params: {min_doc_wrds: 5}\n"))
    with pytest.raises(ValueError, match=r"source gopher-quality: filters\[0\] \(gopher_quality\)"):
        build(manifest, tmp_path / "out", workers=1, progress=False)
    assert not (tmp_path / "out" / "shards").exists()


def test_the_filter_table_is_the_one_list_validation_the_builder_and_the_docs_use():
    import re

    from datatrove.pipeline import filters as dt

    from corpus.manifest import FILTERS, ExtraFilter
    from corpus.text.filters import build_filters
    documented = re.findall(r"^\| `(\w+)` \| datatrove's `(\w+)` \|", (Path(__file__).parent.parent / "docs" /
                                                                     "manifest.md").read_text(), re.MULTILINE)
    assert documented == [(name, cls) for name, (cls, _) in FILTERS.items()]
    assert FILTER_TYPES == tuple(FILTERS)
    built = build_filters([ExtraFilter(type=name) for name in FILTERS if name != "language"])
    assert [type(f.step).__name__ for f in built] == [cls for name, (cls, _) in FILTERS.items() if name != "language"]
    assert all(isinstance(f.step, getattr(dt, FILTERS[f.name][0])) for f in built)
