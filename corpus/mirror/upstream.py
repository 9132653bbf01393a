"""How each upstream subset looks: its file names, its records' fields and metadata, where its text comes from.

Metadata values are synthetic stand-ins shaped like upstream's (hashes, timestamps, URLs
derived from the document); the free-form metadata names each text's real origin.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

from corpus.manifest import Source
from corpus.mirror.documents import (Doc, chapter_runs, code_files, latex_papers, mixed_docs, module_articles,
                                     paragraph_docs, qa_docs, topic_docs)

_EPOCH = datetime(2023, 1, 1)


def _hex(*parts, n: int = 16) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:n]


def _when(rng: random.Random) -> datetime:
    return _EPOCH - timedelta(seconds=rng.randrange(5 * 365 * 86400))


def _iso(rng: random.Random) -> str:
    return _when(rng).strftime("%Y-%m-%dT%H:%M:%S")


def _code_meta(d: Doc, i: int, rng: random.Random) -> dict:
    text = d.text or ""
    lines = text.splitlines() or [""]
    path = d.origin.split(":", 1)[-1]
    return {"content_hash": hashlib.md5(text.encode("utf-8", "surrogatepass")).hexdigest(), "timestamp": "",
            "source": "github", "line_count": len(lines), "max_line_length": max(map(len, lines)),
            "avg_line_length": round(len(text) / len(lines), 6),
            "alnum_prop": round(sum(map(str.isalnum, text)) / max(1, len(text)), 6),
            "repo_name": "python/cpython", "id": _hex("github", i, n=40), "size": len(text.encode("utf-8")),
            "binary": False, "copies": 1 + rng.randrange(3), "ref": "refs/heads/3.11", "path": f"Lib/{path}",
            "mode": "33188", "license": "psf-2.0", "language": [{"name": "Python", "bytes": str(len(text))}],
            "sample_origin": d.origin}


def _redpajama(meta: Callable[[Doc, int, random.Random], dict]):
    def record(d: Doc, i: int, rng: random.Random, text_field: str) -> dict:
        rec = {} if d.text is None else {text_field: d.text}
        rec["meta"] = meta(d, i, rng)
        return rec
    return record


def _book_meta(d, i, rng):
    return {"short_book_title": f"The King James Bible: {d.title}" if d.title else "The King James Bible",
            "publication_date": 1611, "url": "https://www.gutenberg.org/ebooks/10", "sample_origin": d.origin}


def _arxiv_meta(d, i, rng):
    when = _when(rng)
    arxiv_id = f"{when:%y%m}.{10000 + i:05d}"
    return {"timestamp": when.strftime("%Y-%m-%dT%H:%M:%S"), "yymm": f"{when:%y%m}", "arxiv_id": arxiv_id,
            "language": "en", "url": f"https://arxiv.org/abs/{arxiv_id}", "sample_origin": d.origin}


def _wiki_meta(d, i, rng):
    title = d.title or "Sample"
    return {"title": title, "url": f"https://en.wikipedia.org/wiki/{title.replace(' ', '_')}", "language": "en",
            "timestamp": "20230320", "sample_origin": d.origin}


def _stackexchange_meta(d, i, rng):
    return {"language": "en", "url": f"https://stackoverflow.com/questions/{70_000_000 + i}",
            "timestamp": "2023-03-29", "source": "stackexchange", "question_score": str(rng.randrange(60)),
            "sample_origin": d.origin}


def _c4_meta(d, i, rng):
    return {"timestamp": _iso(rng) + "Z", "url": f"https://sample.invalid/c4/{_hex('c4', i, n=12)}",
            "language": "en", "source": "c4", "sample_origin": d.origin}


def _pile_set_name(d: Doc) -> str:
    kind, _, rest = d.origin.partition(":")
    if kind == "stdlib":
        return "Github" if rest.endswith(".py") else "StackExchange"
    return {"kjv": "Gutenberg (PG-19)", "pydoc": "Wikipedia (en)"}.get(kind, "Pile-CC")


def _pile(d: Doc, i: int, rng: random.Random, text_field: str) -> dict:
    return {text_field: d.text, "meta": {"pile_set_name": _pile_set_name(d)}}


def _refinedweb(d: Doc, i: int, rng: random.Random, text_field: str) -> dict:
    when = _when(rng)
    return {text_field: d.text, "url": f"https://sample.invalid/refinedweb/{_hex('rw', i, n=12)}",
            "timestamp": when, "dump": f"CC-MAIN-{when.year}-{when.isocalendar()[1]:02d}",
            "segment": f"{1_600_000_000_000 + rng.randrange(10**11)}.{rng.randrange(100)}",
            "image_urls": []}


def _dolma(source_value: str, metadata: Callable[[Doc, int, random.Random], dict]):
    def record(d: Doc, i: int, rng: random.Random, text_field: str) -> dict:
        rec = {"id": _hex("dolma", source_value, i, n=32)}
        if d.text is not None:
            rec[text_field] = d.text
        added = _when(rng)
        rec.update({"source": source_value, "added": added.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                    "created": (added - timedelta(days=rng.randrange(3000))).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                    "metadata": metadata(d, i, rng)})
        return rec
    return record


def _stack_metadata(d, i, rng):
    path = d.origin.split(":", 1)[-1]
    return {"repo_name": "python/cpython", "path": f"Lib/{path}", "lang": "Python", "license": "PSF-2.0",
            "length": len(d.text or ""), "sample_origin": d.origin}


def _reddit_metadata(d, i, rng):
    return {"subreddit": rng.choice(["AskHistorians", "learnpython", "books", "Python"]),
            "score": rng.randrange(1, 500), "sample_origin": d.origin}


def _pes2o_metadata(d, i, rng):
    return {"sha1": _hex("pes2o", i, n=40), "year": 2000 + rng.randrange(23), "title": d.title,
            "s2fieldsofstudy": ["Computer Science"], "sample_origin": d.origin}


def _gutenberg_metadata(d, i, rng):
    return {"title": f"The King James Bible: {d.title}", "language": "en", "url": "https://www.gutenberg.org/ebooks/10",
            "sample_origin": d.origin}


def _wiki_metadata(d, i, rng):
    return {"title": d.title, "url": f"https://simple.wikipedia.org/wiki/{(d.title or 'Sample').replace(' ', '_')}",
            "length": len(d.text or ""), "sample_origin": d.origin}


def _fineweb_edu(d: Doc, i: int, rng: random.Random, text_field: str) -> dict:
    when = _when(rng)
    dump = f"CC-MAIN-{when.year}-{when.isocalendar()[1]:02d}"
    score = round(2.5 + 2.5 * rng.random(), 6)  # FineWeb-Edu keeps pages its classifier scores 3 or more
    return {text_field: d.text, "id": f"<urn:uuid:{_uuid('fwe', i)}>", "dump": dump,
            "url": f"https://sample.invalid/fineweb-edu/{_hex('fwe', i, n=12)}",
            "file_path": f"s3://commoncrawl/crawl-data/{dump}/segments/{1_700_000_000_000 + i}.{rng.randrange(100)}"
                         f"/warc/{dump}-{when:%Y%m%d%H%M%S}-{i:05d}.warc.gz",
            "language": "en", "language_score": round(0.9 + 0.1 * rng.random(), 6),
            "token_count": len(d.text or "") // 4, "score": score, "int_score": round(score)}


def _stack_v1(d: Doc, i: int, rng: random.Random, text_field: str) -> dict:
    text = d.text or ""
    data = text.encode("utf-8", "surrogatepass")
    lines = text.splitlines() or [""]
    path = d.origin.split(":", 1)[-1]
    # hexsha is the file's git blob id, as upstream's is
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    return {"hexsha": blob, "size": len(data), "ext": "py", "lang": "Python", "max_stars_repo_path": f"Lib/{path}",
            "max_stars_repo_name": "python/cpython", "max_stars_repo_head_hexsha": _hex("cpython", i, n=40),
            "max_stars_repo_licenses": ["PSF-2.0"], "max_stars_count": rng.randrange(50_000, 60_000),
            text_field: d.text, "avg_line_length": round(len(text) / len(lines), 6),
            "max_line_length": max(map(len, lines)),
            "alphanum_fraction": round(sum(map(str.isalnum, text)) / max(1, len(text)), 6)}


def _open_web_math(d: Doc, i: int, rng: random.Random, text_field: str) -> dict:
    extraction = {"found_math": True, "math_score": round(0.2 + 0.8 * rng.random(), 6),
                  "perplexity": round(20 + 400 * rng.random(), 2)}
    return {"url": f"https://sample.invalid/open-web-math/{_hex('owm', i, n=12)}", text_field: d.text,
            "date": _when(rng).strftime("%Y-%m-%d %H:%M:%S"),
            # upstream's metadata is a JSON document stored as a string
            "metadata": json.dumps({"extraction_info": extraction, "sample_origin": d.origin})}


def _generic(group: str) -> Callable:
    if group == "refinedweb":
        return _refinedweb
    if group == "pile":
        return _pile
    if group == "dolma":
        return _dolma("sample", lambda d, i, rng: {"sample_origin": d.origin})
    return _redpajama(_c4_meta)


@dataclass(frozen=True)
class Profile:
    """How one upstream subset looks: file names, the records' shape and where its text comes from."""
    format: str
    names: Callable[[Source, int], list[str]]
    record: Callable[[Doc, int, random.Random, str], dict]
    documents: Callable[[random.Random], list[Doc]]
    style: str = "prose"
    n_files: int = 2
    schema: Callable[[str], object] | None = None  # a pyarrow schema for parquet, given the text field


def _refinedweb_schema(text_field: str):
    import pyarrow as pa
    return pa.schema([(text_field, pa.string()), ("url", pa.string()), ("timestamp", pa.timestamp("us")),
                      ("dump", pa.string()), ("segment", pa.string()), ("image_urls", pa.list_(pa.list_(pa.string())))])


def _pile_schema(text_field: str):
    import pyarrow as pa
    return pa.schema([(text_field, pa.string()), ("meta", pa.struct([("pile_set_name", pa.string())]))])


def _fineweb_edu_schema(text_field: str):
    import pyarrow as pa
    return pa.schema([(text_field, pa.string()), ("id", pa.string()), ("dump", pa.string()), ("url", pa.string()),
                      ("file_path", pa.string()), ("language", pa.string()), ("language_score", pa.float64()),
                      ("token_count", pa.int64()), ("score", pa.float64()), ("int_score", pa.int64())])


def _stack_v1_schema(text_field: str):
    """The Stack v1's columns a reader uses; the max_issues_* and max_forks_* provenance columns are left out."""
    import pyarrow as pa
    return pa.schema([("hexsha", pa.string()), ("size", pa.int64()), ("ext", pa.string()), ("lang", pa.string()),
                      ("max_stars_repo_path", pa.string()), ("max_stars_repo_name", pa.string()),
                      ("max_stars_repo_head_hexsha", pa.string()), ("max_stars_repo_licenses", pa.list_(pa.string())),
                      ("max_stars_count", pa.int64()), (text_field, pa.string()), ("avg_line_length", pa.float64()),
                      ("max_line_length", pa.int64()), ("alphanum_fraction", pa.float64())])


def _open_web_math_schema(text_field: str):
    import pyarrow as pa
    return pa.schema([("url", pa.string()), (text_field, pa.string()), ("date", pa.string()),
                      ("metadata", pa.string())])


def _hf_names(s: Source, n: int) -> list[str]:
    total = s.files or n
    return [f"train-{i:05d}-of-{total:05d}-{_hex(s.name, i)}.parquet" for i in range(n)]


def _fixed(*names: str) -> Callable[[Source, int], list[str]]:
    return lambda s, n: list(names)[:n]


def _numbered(pattern: str) -> Callable[[Source, int], list[str]]:
    return lambda s, n: [pattern.format(i=i, total=s.files or n, hex=_hex(s.name, i, n=32),
                                        uuid=_uuid(s.name, i)) for i in range(n)]


def _uuid(*parts) -> str:
    h = _hex(*parts, n=32)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


PROFILES: dict[str, Profile] = {
    "refinedweb": Profile("parquet", _hf_names, _refinedweb,
                          lambda rng: topic_docs() + chapter_runs(rng, 150, 1), n_files=3,
                          schema=_refinedweb_schema),
    "redpajama-github": Profile("jsonl", _numbered("github/filtered_{hex}.sampled.jsonl"), _redpajama(_code_meta),
                                lambda rng: code_files(rng, 230), style="code", n_files=3),
    "redpajama-books": Profile("jsonl", _fixed("book/book.jsonl"), _redpajama(_book_meta),
                               lambda rng: chapter_runs(rng, 210, 2), n_files=1),
    "redpajama-arxiv": Profile("jsonl", _numbered("arxiv/arxiv_{uuid}.jsonl"), _redpajama(_arxiv_meta),
                               lambda rng: latex_papers(), n_files=3),
    "redpajama-wikipedia": Profile("jsonl", _fixed("wikipedia/wiki.jsonl"), _redpajama(_wiki_meta),
                                   lambda rng: module_articles() + topic_docs(), n_files=1),
    "redpajama-stackexchange": Profile("jsonl", _fixed("stackexchange/stackexchange.jsonl"),
                                       _redpajama(_stackexchange_meta), lambda rng: qa_docs(rng, 230),
                                       style="code", n_files=1),
    "redpajama-c4": Profile("jsonl", _numbered("c4/c4-train.{i:05d}-of-{total:05d}.jsonl"), _redpajama(_c4_meta),
                            lambda rng: paragraph_docs(rng, 240, 4), n_files=3),
    "pile-dedup": Profile("parquet", _hf_names, _pile, lambda rng: mixed_docs(rng, 230), n_files=2,
                          schema=_pile_schema),
    "dolma-stack": Profile("json.gz", _numbered("stack-v4-train-{i:04d}.json.gz"),
                           _dolma("stack-dedup", _stack_metadata), lambda rng: code_files(rng, 230),
                           style="code", n_files=3),
    "dolma-reddit": Profile("json.gz", _numbered("reddit-v5-dedupe-pii-nsfw-toxic-{i:04d}.json.gz"),
                            _dolma("reddit", _reddit_metadata), lambda rng: paragraph_docs(rng, 240, 2)),
    "dolma-pes2o": Profile("json.gz", _numbered("pes2o_v2-{i:04d}.json.gz"), _dolma("pes2o", _pes2o_metadata),
                           lambda rng: module_articles() + topic_docs()),
    "dolma-gutenberg": Profile("json.gz", _numbered("books-{i:04d}.json.gz"), _dolma("gutenberg", _gutenberg_metadata),
                               lambda rng: chapter_runs(rng, 210, 3), n_files=3),
    "dolma-wiki": Profile("json.gz", _numbered("en_simple_wiki_v0-{i:04d}.json.gz"),
                          _dolma("wikipedia", _wiki_metadata), lambda rng: module_articles() + topic_docs()),
    # manifests/fineweb-edu-stack-math.yaml; names are paths below each dataset's root on the Hub
    "fineweb-edu": Profile("parquet", _numbered("sample/100BT/{i:03d}_00000.parquet"), _fineweb_edu,
                           lambda rng: module_articles() + topic_docs() + paragraph_docs(rng, 60, 3), n_files=3,
                           schema=_fineweb_edu_schema),
    "the-stack-dedup-python": Profile("parquet", _numbered("data/python/data-{i:05d}-of-{total:05d}.parquet"),
                                      _stack_v1, lambda rng: code_files(rng, 230), style="code", n_files=3,
                                      schema=_stack_v1_schema),
    "open-web-math": Profile("parquet", lambda s, n: [f"data/{name}" for name in _hf_names(s, n)], _open_web_math,
                             lambda rng: latex_papers(), n_files=2, schema=_open_web_math_schema),
}

_EXTENSIONS = {"parquet": ".parquet", "jsonl": ".jsonl", "jsonl.zst": ".jsonl.zst", "json.gz": ".json.gz"}


def profile_for(source: Source) -> Profile:
    """The upstream profile a manifest source names, or a generic one built from its group and format."""
    known = PROFILES.get(source.name)
    if known is not None:
        return known
    return Profile(source.format, _numbered(f"{source.name}-{{i:05d}}"), _generic(source.group),
                   lambda rng: mixed_docs(rng, 230))


def file_names(source: Source, profile: Profile) -> list[str]:
    names = profile.names(source, profile.n_files)
    ext = _EXTENSIONS[source.format]
    out = []
    for name in names:
        for old in sorted(_EXTENSIONS.values(), key=len, reverse=True):
            if name.endswith(old):
                name = name[: -len(old)]
                break
        out.append(name + ext)
    return out
