"""Fine-tuning records: where they are read from, which format each one has, and what is refused and why.

`read_records` yields ``(where, value)`` from a local file or folder or a Hugging Face dataset; `parse` tells a
record's format (`FORMATS`) and normalises it to `PlainText`, `PromptCompletion`, `Chat` or `Preference`, or
returns a `Rejected` that says why not. `load` reads one source for SFT or preference training; every bad record
goes to its `Quarantine`, and a source that is mostly bad is refused with a `DataError`.
"""
from __future__ import annotations

import gzip
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Union

from model.chat import ROLES

FORMATS = ("text", "prompt_completion", "chat", "preference")
FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")
EXCERPT_CHARS = 200

Record = tuple[str, Any]  # (where: "<file>:<line>" or "<source>:row <n>", value)


class DataError(ValueError):
    """A fine-tuning source that cannot be used as a whole; the message names it and its first bad record."""


@dataclass(frozen=True)
class NotJSON:
    """The value of a record whose line did not parse: kept so it is quarantined, not raised."""

    line: str
    error: str


@dataclass(frozen=True)
class Message:
    role: str
    content: str


Messages = tuple[Message, ...]


@dataclass(frozen=True)
class PlainText:
    """Train on every token."""

    where: str
    text: str


@dataclass(frozen=True)
class PromptCompletion:
    """Plain text: the prompt then the completion, concatenated; train on the completion."""

    where: str
    prompt: str
    completion: str


@dataclass(frozen=True)
class Chat:
    """Messages in the chat template; train on the assistant messages from index ``train_from`` on."""

    where: str
    messages: Messages
    train_from: int = 0


@dataclass(frozen=True)
class Preference:
    """A prompt and two completions, all plain strings or all messages (the prompt's, then each reply's)."""

    where: str
    prompt: str | Messages
    chosen: str | Messages
    rejected: str | Messages


SFTRecord = Union[PlainText, PromptCompletion, Chat]
Parsed = Union[PlainText, PromptCompletion, Chat, Preference]


@dataclass(frozen=True)
class Rejected:
    """A record that is not used: where it is, why (``reason``), the kind of fault, and a short excerpt."""

    where: str
    reason: str
    kind: str = "invalid"
    excerpt: str = ""


def format_of(parsed: Parsed) -> str:
    """The `FORMATS` name of the record ``parsed`` came from."""
    if isinstance(parsed, PlainText):
        return "text"
    if isinstance(parsed, PromptCompletion) or (isinstance(parsed, Chat) and parsed.train_from):
        return "prompt_completion"
    return "chat" if isinstance(parsed, Chat) else "preference"


# Reading.

def read_records(spec: str) -> Iterator[Record]:
    """Records of a file, a folder of files, a ``datasets.save_to_disk`` folder (``path@split``) or a Hub dataset
    (``name``, ``name:config``, ``name@split``; split ``train`` by default). Rows are counted from 0, lines from 1."""
    path = Path(spec).expanduser()
    if path.is_file():
        yield from _read_file(path)
        return
    if path.is_dir():
        if _is_saved_dataset(path):
            yield from _read_saved(path, None, spec)
            return
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(FILE_SUFFIXES))
        if not files:
            raise DataError(f"{spec}: a folder with no {', '.join(FILE_SUFFIXES)} files and no saved dataset")
        for f in files:
            yield from _read_file(f)
        return
    base, _, split = spec.rpartition("@")
    if base and Path(base).expanduser().is_dir():
        if not _is_saved_dataset(Path(base).expanduser()):
            raise DataError(f"{spec}: {base} is not a datasets.save_to_disk folder, so it has no splits to name")
        yield from _read_saved(Path(base).expanduser(), split, spec)
        return
    if _looks_local(spec):
        raise DataError(f"{spec}: no such file or folder")
    yield from _read_hub(spec)


def _read_file(path: Path) -> Iterator[Record]:
    name = path.name
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq
        row = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for value in batch.to_pylist():
                yield f"{path}:row {row}", value
                row += 1
        return
    if not name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
        raise DataError(f"{path}: not one of {', '.join(FILE_SUFFIXES)}")
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rb") as f:
        if name.endswith((".json", ".json.gz")):
            head = f.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
            f.seek(0)
            if head.startswith(b"["):
                yield from _read_json_array(path, f.read())
                return
        for number, line in enumerate(f, start=1):
            if line.strip():
                yield f"{path}:{number}", _parse_line(line)


def _parse_line(line: bytes) -> Any:
    try:
        return json.loads(line.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        return NotJSON(line.decode("utf-8", "replace"), f"invalid UTF-8 at byte {e.start}")
    except json.JSONDecodeError as e:
        return NotJSON(line.decode("utf-8-sig"), str(e))


def _read_json_array(path: Path, data: bytes) -> Iterator[Record]:
    try:
        rows = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        yield f"{path}:{line}", NotJSON(data.splitlines()[line - 1].decode("utf-8", "replace"),
                                        f"invalid UTF-8 at byte {e.start}")
        return
    except json.JSONDecodeError as e:
        lines = e.doc.splitlines()
        yield f"{path}:{e.lineno}", NotJSON(lines[e.lineno - 1] if e.lineno <= len(lines) else "", str(e))
        return
    for row, value in enumerate(rows):
        yield f"{path}:row {row}", value


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").exists() or (path / "state.json").exists()


def _read_saved(path: Path, split: str | None, spec: str) -> Iterator[Record]:
    import datasets
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        loaded = _pick_split(loaded, split, spec)
    elif split is not None:
        raise DataError(f"{spec}: {path} holds one dataset, not splits; drop the @{split}")
    yield from _rows(loaded, spec)


def _pick_split(splits, split: str | None, spec: str):
    names = list(splits)
    if split is None:
        split = "train" if "train" in names or len(names) != 1 else names[0]
    if split not in names:
        raise DataError(f"{spec}: no split {split!r}; it has {', '.join(names)} (name one as <path>@<split>)")
    return splits[split]


def _rows(dataset, spec: str) -> Iterator[Record]:
    for row, value in enumerate(dataset):
        yield f"{spec}:row {row}", value


def _looks_local(spec: str) -> bool:
    return spec.startswith(("/", ".", "~")) or spec.endswith(FILE_SUFFIXES) or spec.count("/") > 1


def _read_hub(spec: str) -> Iterator[Record]:
    name, _, split = spec.partition("@")
    name, _, config = name.partition(":")
    import datasets
    try:
        dataset = datasets.load_dataset(name, config or None, split=split or "train")
    except Exception as e:  # the Hub and datasets raise many kinds (offline, missing, gated); all mean the same here
        raise DataError(f"{spec}: not a local file or folder, and the Hugging Face dataset {name!r} could not be "
                        f"loaded ({type(e).__name__}: {e})") from e
    yield from _rows(dataset, spec)


# Telling formats apart.

def parse(record: Record) -> Parsed | Rejected:
    """The record's normalised form, or why it cannot be used."""
    where, value = record
    if isinstance(value, NotJSON):
        return Rejected(where, f"not JSON: {value.error}", "not JSON", _clip(value.line.rstrip("\n")))
    try:
        return _parse(where, value)
    except _Invalid as e:
        return Rejected(where, str(e), e.kind, excerpt(value))


class _Invalid(Exception):
    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


def _parse(where: str, value: Any) -> Parsed:
    if not isinstance(value, dict):
        raise _Invalid("not an object", f"not an object but {type(value).__name__}")
    keys = {k for k, v in value.items() if v is not None}  # parquet and datasets fill absent columns with None
    if {"chosen", "rejected"} <= keys:
        return _preference(where, value.get("prompt"), value["chosen"], value["rejected"])
    if "messages" in keys:
        messages = _messages(value["messages"], "messages", "invalid chat")
        _need_assistant(messages, 0, "messages", "invalid chat")
        return Chat(where, messages)
    if {"prompt", "completion"} <= keys:
        return _prompt_completion(where, value["prompt"], value["completion"])
    if "text" in keys:
        if not isinstance(value["text"], str) or not value["text"]:
            raise _Invalid("invalid text", f"'text' must be a non-empty string, not {_kind(value['text'])}")
        return PlainText(where, value["text"])
    raise _Invalid("unknown format", f"unknown format: fields {sorted(keys)}; expected 'text', 'prompt' and "
                                     "'completion', 'messages', or 'prompt', 'chosen' and 'rejected'")


def _prompt_completion(where: str, prompt: Any, completion: Any) -> PromptCompletion | Chat:
    if isinstance(prompt, str) and isinstance(completion, str):
        if not completion:
            raise _Invalid("invalid prompt_completion", "'completion' is empty")
        return PromptCompletion(where, prompt, completion)
    if isinstance(prompt, list) and isinstance(completion, list):
        head = _messages(prompt, "prompt", "invalid prompt_completion")
        tail = _messages(completion, "completion", "invalid prompt_completion")
        _need_assistant(head + tail, len(head), "completion", "invalid prompt_completion")
        return Chat(where, head + tail, train_from=len(head))
    raise _Invalid("invalid prompt_completion", "'prompt' and 'completion' must both be strings or both message "
                                                f"lists, not {_kind(prompt)} and {_kind(completion)}")


def _preference(where: str, prompt: Any, chosen: Any, rejected: Any) -> Preference:
    kind = "invalid preference"
    if isinstance(chosen, str) and isinstance(rejected, str):
        if chosen.strip() == rejected.strip():
            raise _Invalid("identical preference", "'chosen' and 'rejected' are the same: the pair prefers nothing")
        if isinstance(prompt, str):
            return Preference(where, prompt, chosen, rejected)
        if not isinstance(prompt, list):
            raise _Invalid(kind, f"'prompt' must be a string or a message list, not {_kind(prompt)}")
        # replies to a conversation are the assistant's next message
        chosen, rejected = [{"role": "assistant", "content": chosen}], [{"role": "assistant", "content": rejected}]
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        raise _Invalid(kind, f"'chosen' and 'rejected' must both be strings or both message lists, not "
                             f"{_kind(chosen)} and {_kind(rejected)}")
    chosen, rejected = _messages(chosen, "chosen", kind), _messages(rejected, "rejected", kind)
    if chosen == rejected:
        raise _Invalid("identical preference", "'chosen' and 'rejected' are the same: the pair prefers nothing")
    if isinstance(prompt, list):
        head = _messages(prompt, "prompt", kind)
        if chosen[:len(head)] == head and rejected[:len(head)] == head:  # some datasets repeat the prompt
            chosen, rejected = chosen[len(head):], rejected[len(head):]
    else:
        shared = _shared_start(chosen, rejected)
        head, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
        if prompt is None:
            if not head:
                raise _Invalid(kind, "no 'prompt', and 'chosen' and 'rejected' share no leading messages")
        elif not isinstance(prompt, str):
            raise _Invalid(kind, f"'prompt' must be a string or a message list, not {_kind(prompt)}")
        elif not head:
            head = (Message("user", prompt),)
        elif head[-1].role != "user" or head[-1].content.strip() != prompt.strip():
            raise _Invalid(kind, "'prompt' is not the last user message that 'chosen' and 'rejected' share")
    for name, reply in (("chosen", chosen), ("rejected", rejected)):
        if not reply or reply[0].role != "assistant":
            raise _Invalid(kind, f"'{name}' must answer the prompt with an assistant message")
    if not head:
        raise _Invalid(kind, "'prompt' is empty")
    return Preference(where, head, chosen, rejected)


def _shared_start(a: Messages, b: Messages) -> int:
    """How many leading messages ``a`` and ``b`` share, leaving each at least one of its own."""
    n = 0
    while n < min(len(a), len(b)) - 1 and a[n] == b[n]:
        n += 1
    return n


def _messages(value: Any, name: str, kind: str) -> Messages:
    if not isinstance(value, list) or not value:
        raise _Invalid(kind, f"'{name}' must be a non-empty list of messages, not {_kind(value)}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise _Invalid(kind, f"'{name}' message {i} must be an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise _Invalid(kind, f"'{name}' message {i}: role {m['role']!r} is not one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise _Invalid(kind, f"'{name}' message {i}: 'content' must be a string, not {_kind(m['content'])}")
        out.append(Message(m["role"], m["content"]))
    return tuple(out)


def _need_assistant(messages: Messages, start: int, name: str, kind: str) -> None:
    if not any(m.role == "assistant" for m in messages[start:]):
        raise _Invalid(kind, f"'{name}' has no assistant message to train on")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def excerpt(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except ValueError:  # a circular structure cannot come from JSON, but repr never fails
        text = repr(value)
    return _clip(text)


def _clip(text: str) -> str:
    text = text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")  # a lone surrogate must not stop the writing


# What a training method accepts.

Want = Literal["sft", "preference"]


def accept(parsed: Parsed, want: Want) -> Parsed | Rejected:
    """``parsed`` if a ``want`` run can train on it, else why not."""
    if want == "preference" and not isinstance(parsed, Preference):
        return Rejected(parsed.where, f"a {format_of(parsed)} record: preference training (--method dpo or rso) "
                                      "needs 'prompt', 'chosen' and 'rejected'", "not preference")
    if want == "sft" and isinstance(parsed, Preference):
        return Rejected(parsed.where, "a preference record (prompt, chosen, rejected): train it with --method dpo "
                                      "or --method rso; SFT needs text, prompt/completion or messages records",
                        "preference in SFT data")
    return parsed


@dataclass
class Quarantine:
    """The bad records of one source, with counts per kind of fault; `check` refuses a source that is mostly bad."""

    spec: str
    seen: int = 0
    rejected: list[Rejected] = field(default_factory=list)

    def add(self, rejected: Rejected) -> None:
        self.rejected.append(rejected)

    def __len__(self) -> int:
        return len(self.rejected)

    @property
    def counts(self) -> Counter:
        return Counter(r.kind for r in self.rejected)

    def check(self) -> None:
        """Raise `DataError` if the source is empty or more than half of its records are bad."""
        if self.seen == 0:
            raise DataError(f"{self.spec}: no records")
        bad = len(self.rejected)
        if 2 * bad > self.seen:
            first = self.rejected[0]
            kinds = ", ".join(f"{n} {k}" for k, n in self.counts.most_common())
            raise DataError(f"{self.spec}: {bad} of {self.seen} records are bad ({kinds}); the first is "
                            f"{first.where}: {first.reason}")

    def summary(self) -> str:
        kinds = ", ".join(f"{n} {k}" for k, n in self.counts.most_common())
        head = f"{self.spec}: {len(self.rejected)} of {self.seen} records quarantined"
        return f"{head} ({kinds})" if kinds else head

    def write(self, path: str | Path) -> Path:
        """One JSON line per bad record: ``{"where", "reason", "excerpt"}``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for r in self.rejected:
                f.write(json.dumps({"where": r.where, "reason": r.reason, "excerpt": r.excerpt},
                                   ensure_ascii=False) + "\n")
        return path


def load(spec: str, want: Want = "sft") -> tuple[list[Parsed], Quarantine]:
    """The usable records of ``spec`` for a ``want`` run, and its quarantine; refuses a mostly bad source."""
    if want not in ("sft", "preference"):
        raise ValueError(f"want must be 'sft' or 'preference', not {want!r}")
    quarantine = Quarantine(spec)
    examples: list[Parsed] = []
    for record in read_records(spec):
        quarantine.seen += 1
        parsed = parse(record)
        if not isinstance(parsed, Rejected):
            parsed = accept(parsed, want)
            if isinstance(parsed, Rejected):
                parsed = Rejected(parsed.where, parsed.reason, parsed.kind, excerpt(record[1]))
        if isinstance(parsed, Rejected):
            quarantine.add(parsed)
        else:
            examples.append(parsed)
    quarantine.check()
    return examples, quarantine
