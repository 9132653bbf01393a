"""Readers: list upstream files and stream the records of one slice of one file.

Every file is opened through fsspec (local paths, ``hf://``, ``s3://``, ``https://``).
Parquet is read in record batches of the slice's row groups; JSON lines (plain, ``.zst``,
``.gz``) are read line by line. Neither ever holds a whole file in memory.

A slice yields :class:`Record` for every good document and :class:`BadRecord` for every
line or row that cannot be a document (broken JSON, invalid UTF-8, missing text, a
compressed stream that ends mid-way). A file that cannot be opened or decoded at all
raises, and the caller fails the work unit.
"""
from __future__ import annotations

import gzip
import io
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import fsspec

from corpus.manifest import Upstream

BROKEN_JSON = "broken_json"
INVALID_UTF8 = "invalid_utf8"
MISSING_TEXT = "missing_text"
TEXT_NOT_STRING = "text_not_string"
TRUNCATED = {"json.gz": "truncated_gzip", "jsonl.zst": "truncated_zstd"}

EXCERPT_CHARS = 160
_PARQUET_BATCH_ROWS = 512
_GLOB_CHARS = re.compile(r"[*?\[]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


@dataclass(frozen=True)
class Slice:
    """A bounded part of one input file.

    Parquet: row groups ``[first, stop)``; ``row0`` is the file row where the first one starts.
    JSON lines: the lines that *start* in bytes ``[start, end)`` of the (decompressed) stream;
    ``end`` None means to the end of the file.
    """
    uri: str
    format: str
    row_groups: tuple[int, int] | None = None
    row0: int = 0
    start: int = 0
    end: int | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.format == "parquet":
            d.pop("start"), d.pop("end")
            d["row_groups"] = list(self.row_groups) if self.row_groups else None
        else:
            d.pop("row_groups"), d.pop("row0")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Slice":
        d = dict(d)
        if d.get("row_groups") is not None:
            d["row_groups"] = tuple(d["row_groups"])
        return cls(**d)

    def describe(self) -> str:
        if self.format == "parquet":
            return f"{self.uri} row groups {self.row_groups[0]}..{self.row_groups[1] - 1}" \
                if self.row_groups else f"{self.uri} (all row groups)"
        end = "end" if self.end is None else str(self.end)
        return f"{self.uri} bytes {self.start}..{end}"


@dataclass(frozen=True)
class Record:
    location: int        # file row (parquet) or byte offset of the line in the decompressed stream
    text: str


@dataclass(frozen=True)
class BadRecord:
    location: int
    reason: str
    detail: str
    excerpt: str


# ---------------------------------------------------------------- listing

def list_files(upstream: Upstream) -> list[str]:
    """Expand a source's upstream into file URIs, sorted so every run plans the same units."""
    if upstream.files is not None:
        uris: list[str] = []
        for pattern in upstream.files:
            fs, path = fsspec.core.url_to_fs(pattern)
            paths = fs.glob(path) if _GLOB_CHARS.search(path) else [path]
            if not paths:
                raise FileNotFoundError(f"upstream pattern {pattern!r} matches no files")
            uris.extend(fs.unstrip_protocol(p) for p in paths)
        return sorted(set(uris))
    with fsspec.open(upstream.listing, "rt", encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    match = re.compile(upstream.match) if upstream.match else None
    uris = [u for u in lines if u and not u.startswith("#") and (match is None or match.search(u))]
    if not uris:
        raise FileNotFoundError(f"upstream list {upstream.listing!r} names no file matching {upstream.match!r}")
    return sorted(set(uris))


def file_size(uri: str) -> int:
    fs, path = fsspec.core.url_to_fs(uri)
    return int(fs.size(path))


def parquet_row_groups(uri: str) -> list[tuple[int, int]]:
    """(rows, uncompressed bytes) of every row group, read from the footer only."""
    import pyarrow.parquet as pq
    with fsspec.open(uri, "rb") as f:
        meta = pq.ParquetFile(f).metadata
        return [(meta.row_group(i).num_rows, meta.row_group(i).total_byte_size) for i in range(meta.num_row_groups)]


# ---------------------------------------------------------------- reading a slice

def read_slice(sl: Slice, text_field: str) -> Iterator[Record | BadRecord]:
    if sl.format == "parquet":
        yield from _read_parquet(sl, text_field)
    else:
        yield from _read_json_lines(sl, text_field)


def _excerpt(raw: bytes | str) -> str:
    if isinstance(raw, bytes):
        raw = raw[:EXCERPT_CHARS * 4].decode("utf-8", errors="replace")
    return raw[:EXCERPT_CHARS]


def _read_parquet(sl: Slice, text_field: str) -> Iterator[Record | BadRecord]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    with fsspec.open(sl.uri, "rb") as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        if text_field not in names:
            raise ValueError(f"{sl.uri}: no column {text_field!r} (the manifest's text_field); it has {names}")
        first, stop = sl.row_groups if sl.row_groups else (0, pf.metadata.num_row_groups)
        row = sl.row0
        is_binary = pa.types.is_binary(pf.schema_arrow.field(text_field).type) or \
            pa.types.is_large_binary(pf.schema_arrow.field(text_field).type)
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, row_groups=range(first, stop),
                                     columns=[text_field], use_threads=False):
            for value in batch.column(0).to_pylist():
                if value is None:
                    yield BadRecord(row, MISSING_TEXT, f"column {text_field!r} is null", "")
                elif is_binary:
                    try:
                        yield Record(row, value.decode("utf-8"))
                    except UnicodeDecodeError as e:
                        yield BadRecord(row, INVALID_UTF8, str(e), _excerpt(value))
                else:
                    yield Record(row, value)
                row += 1


def _open_stream(uri: str, fmt: str, start: int):
    options = {}
    if (fmt != "jsonl" or start == 0) and uri.split("://", 1)[0] in ("http", "https"):
        options["block_size"] = 0  # read front to back as one stream, no range requests
    raw = fsspec.open(uri, "rb", **options).open()
    if options and fmt == "jsonl":  # a streaming HTTP file cannot seek, which its own readline needs
        return raw, io.BufferedReader(raw, buffer_size=1 << 20)
    if fmt == "json.gz":
        return raw, gzip.GzipFile(fileobj=raw, mode="rb")
    if fmt == "jsonl.zst":
        return raw, io.BufferedReader(_ZstdFrames(raw), buffer_size=1 << 20)
    return raw, raw


class _ZstdFrames(io.RawIOBase):
    """Decompress concatenated zstd frames; raise EOFError, like gzip, when the last frame is cut."""

    def __init__(self, raw):
        import zstandard
        self._zstd = zstandard.ZstdDecompressor()
        self._raw = raw
        self._obj = self._zstd.decompressobj()
        self._pending = b""
        self._started = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            data = self._raw.read(1 << 20)
            if not data:
                if self._started and not self._obj.eof:
                    raise EOFError("compressed file ended before the end of its last zstd frame")
                return 0
            while data:
                self._started = True
                self._pending += self._obj.decompress(data)
                data = b""
                if self._obj.eof:
                    data = self._obj.unused_data
                    self._obj = self._zstd.decompressobj()
                    self._started = False
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _read_json_lines(sl: Slice, text_field: str) -> Iterator[Record | BadRecord]:
    raw, stream = _open_stream(sl.uri, sl.format, sl.start)
    try:
        pos = 0
        if sl.start and sl.format == "jsonl":
            # land on the first line that starts at or after `start`
            raw.seek(sl.start - 1)
            pos = sl.start - 1 + len(raw.readline())
        lines = iter(stream)
        while True:
            try:
                line = next(lines)
            except StopIteration:
                break
            except EOFError as e:  # the compressed stream ends before its end marker
                if pos >= sl.start and (sl.end is None or pos < sl.end):
                    yield BadRecord(pos, TRUNCATED.get(sl.format, "truncated"), f"{sl.uri}: {e}", "")
                break
            at, pos = pos, pos + len(line)
            if at < sl.start:
                continue
            if sl.end is not None and at >= sl.end:
                break
            yield _parse_line(line, at, text_field)
    finally:
        stream.close()
        raw.close()


def _parse_line(line: bytes, at: int, text_field: str) -> Record | BadRecord:
    try:
        text_line = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return BadRecord(at, INVALID_UTF8, str(e), _excerpt(line))
    if not text_line.strip():
        return BadRecord(at, BROKEN_JSON, "empty line", "")
    try:
        obj = json.loads(text_line)
    except ValueError as e:
        return BadRecord(at, BROKEN_JSON, str(e), _excerpt(text_line))
    if not isinstance(obj, dict):
        return BadRecord(at, BROKEN_JSON, f"a line must hold a JSON object, not {type(obj).__name__}",
                         _excerpt(text_line))
    text = obj.get(text_field)
    if text is None:
        return BadRecord(at, MISSING_TEXT, f"no {text_field!r} field", _excerpt(text_line))
    if not isinstance(text, str):
        return BadRecord(at, TEXT_NOT_STRING, f"{text_field!r} is a {type(text).__name__}", _excerpt(text_line))
    if _SURROGATE_ESCAPE.search(text_line):  # JSON can escape half a surrogate pair, which is not text
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            return BadRecord(at, INVALID_UTF8, f"lone surrogate in {text_field!r}: {e}", _excerpt(text_line))
    return Record(at, text)
