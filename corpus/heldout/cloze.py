"""Multiple-choice cloze items cut from held-out passages: which of four spans truly comes next.

An item's context is a stretch of one held-out passage; its gold choice is the span that follows it there; its
three distractors are spans of the same shape cut from three other held-out passages of the same kind, so every
choice is plausible in form and only the context tells the gold apart. Two kinds (`KINDS`):

- prose, from King James Bible chapters: 30 to 60 words of context, then 4 words;
- code, from Python standard-library modules: 6 to 12 whole lines and the head of the next, then the rest of that
  line (4 to 60 characters, cut at a single space; distractors within half to twice the gold's length). The cut
  lines, gold and distractors alike, are code: docstrings and comments are prose, and stay in contexts only.

The context and the gold are joined by one space, as lm-eval joins them (its default `target_delimiter`), and that
is exactly the text of the passage there (prose gold words are joined by single spaces). An item's context has at
least 15 words, so `corpus.heldout.passages` guarantees that neither it nor the scored text (context, space, gold)
is in any training document.
Items are a pure function of the passages, the kind, the count and the seed.
"""
from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from corpus.cleaning.words import NGRAM, words
from corpus.heldout.passages import held_out, ngram_set, training_texts
from corpus.manifest import Manifest
from corpus.mirror import text as pool
from corpus.mirror.text import Passage

CHOICES = 4
MIN_WORDS = NGRAM + 2  # words of context: a substring of a training text this long shares a 13-gram with it
PROSE_CONTEXT_WORDS = (30, 60)
PROSE_GOLD_WORDS = 4
CODE_CONTEXT_LINES = (6, 12)
CODE_GOLD_CHARS = (4, 60)
DISTRACTOR_TRIES = 24  # other passages tried per item for its three distractors


@dataclass(frozen=True)
class ClozeItem:
    context: str
    choices: tuple[str, ...]
    answer: int               # index of the gold choice
    origin: str               # the passage of the context and the gold (`kjv:1:3`, `stdlib:tarfile.py`)

    @property
    def scored_text(self) -> str:
        """The context and the gold as the model reads them."""
        return f"{self.context} {self.choices[self.answer]}"


# ---------------------------------------------------------------- prose: words

def _word_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in re.finditer(r"\S+", text)]


def _prose_cut(text: str, rng: random.Random) -> tuple[str, str] | None:
    spans = _word_spans(text)
    k, g = rng.randint(*PROSE_CONTEXT_WORDS), PROSE_GOLD_WORDS
    if len(spans) < k + g:
        return None
    s = rng.randrange(len(spans) - k - g + 1)
    end, nxt = spans[s + k - 1][1], spans[s + k][0]
    if text[end:nxt] != " ":  # a line break there: the one space lm-eval puts in would not be the passage's text
        return None
    return text[spans[s][0]:end], " ".join(text[a:b] for a, b in spans[s + k:s + k + g])


def _prose_span(text: str, gold: str, rng: random.Random) -> str | None:
    spans, g = _word_spans(text), len(gold.split(" "))
    if len(spans) < g:
        return None
    s = rng.randrange(len(spans) - g + 1)
    return " ".join(text[a:b] for a, b in spans[s:s + g])


# ---------------------------------------------------------------- code: lines

def _split_points(line: str) -> list[int]:
    """Single spaces after a line's indentation where the rest of the line can be a choice."""
    lo, hi = CODE_GOLD_CHARS
    indent = len(line) - len(line.lstrip(" "))
    out = []
    for i in range(indent + 1, len(line) - 1):
        if line[i] == " " and line[i - 1] != " " and line[i + 1] != " ":
            tail = line[i + 1:].rstrip()
            if lo <= len(tail) <= hi and any(c.isalnum() for c in tail):
                out.append(i)
    return out


@lru_cache(maxsize=1024)
def _code_lines(text: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The passage's lines, and the numbers of those that are code with a place to cut: not blank, not in a
    triple-quoted string, no comment, no quotes opening or closing one. A line scan, not `tokenize`: it only has
    to keep docstrings and comments, which are prose, out of the code task."""
    lines = tuple(text.split("\n"))
    code, inside = [], None  # inside: the quotes of the string the scan is in
    for number, line in enumerate(lines):
        marks = [q for q in ('"""', "'''") if q in line]
        if inside is not None or marks:
            for q in marks if inside is None else [inside]:
                if line.count(q) % 2:
                    inside = q if inside is None else None
            continue
        if "#" not in line and _split_points(line):
            code.append(number)
    return lines, tuple(code)


def _code_cut(text: str, rng: random.Random) -> tuple[str, str] | None:
    lines, code = _code_lines(text)
    if not code:
        return None
    j = rng.choice(code)
    p = rng.choice(_split_points(lines[j]))
    first = max(0, j - rng.randint(*CODE_CONTEXT_LINES))
    return "\n".join(lines[first:j] + (lines[j][:p],)), lines[j][p + 1:].rstrip()


def _code_span(text: str, gold: str, rng: random.Random) -> str | None:
    lines, code = _code_lines(text)
    for number in rng.sample(code, min(8, len(code))):  # a few lines, for a tail near the gold's length
        tails = [lines[number][p + 1:].rstrip() for p in _split_points(lines[number])]
        tails = [t for t in tails if len(gold) / 2 <= len(t) <= 2 * len(gold)]
        if tails:
            return rng.choice(tails)
    return None


# ---------------------------------------------------------------- the kinds

@dataclass(frozen=True)
class ClozeKind:
    """A kind of held-out text and how its items are cut: `cut` makes (context, gold) from a passage or gives None,
    `span` makes a distractor shaped like a gold from another passage or gives None."""
    name: str
    what: str                                   # the passages, plural, for messages
    passages: Callable[[], tuple[Passage, ...]]
    cut: Callable[[str, random.Random], tuple[str, str] | None]
    span: Callable[[str, str, random.Random], str | None]

    @property
    def task(self) -> str:
        return f"mirror_{self.name}_cloze"


KINDS: dict[str, ClozeKind] = {
    "prose": ClozeKind("prose", "King James Bible chapters", pool.kjv_chapters, _prose_cut, _prose_span),
    "code": ClozeKind("code", "Python standard-library modules", pool.stdlib_sources, _code_cut, _code_span),
}


def cloze_items(kind: ClozeKind, passages: Sequence[Passage], n: int, seed: int) -> tuple[ClozeItem, ...]:
    """``n`` items of ``kind`` cut from ``passages``, the same for the same arguments; ValueError when too few can."""
    if len(passages) < CHOICES:
        raise ValueError(f"{kind.name} cloze items need at least {CHOICES} held-out {kind.what}, "
                         f"{len(passages)} are held out")
    rng = random.Random(f"elm-corpus cloze:{kind.name}:{seed}")
    items: list[ClozeItem] = []
    seen: set[tuple[str, str]] = set()
    for _ in range(50 * n):
        if len(items) == n:
            break
        p = rng.randrange(len(passages))
        cut = kind.cut(passages[p].text, rng)
        if cut is None or cut in seen or len(words(cut[0])) < MIN_WORDS:
            continue
        gold = cut[1]
        taken = {gold.casefold()}
        distractors = []
        for other in rng.sample(range(len(passages)), min(DISTRACTOR_TRIES, len(passages))):
            span = kind.span(passages[other].text, gold, rng) if other != p else None
            if span is not None and span.casefold() not in taken:
                taken.add(span.casefold())
                distractors.append(span)
                if len(distractors) == CHOICES - 1:
                    break
        if len(distractors) < CHOICES - 1:
            continue
        seen.add(cut)
        answer = rng.randrange(CHOICES)
        items.append(ClozeItem(cut[0], tuple(distractors[:answer] + [gold] + distractors[answer:]), answer,
                               passages[p].origin))
    if len(items) < n:
        raise ValueError(f"only {len(items)} {kind.name} cloze items could be cut from {len(passages)} held-out "
                         f"{kind.what}; ask for fewer")
    return tuple(items)


# ---------------------------------------------------------------- the tasks of a manifest

@dataclass(frozen=True)
class ClozeTask:
    """One task: its items, and the held-out passages they were cut from out of the kind's whole pool."""
    kind: ClozeKind
    items: tuple[ClozeItem, ...]
    held_out: int
    pool: int
    manifest: str
    seed: int

    @property
    def name(self) -> str:
        return self.kind.task


def parse_kinds(names: str) -> list[ClozeKind]:
    """`"prose,code"` -> the kinds, in order, each once; an unknown name is a ValueError."""
    wanted = list(dict.fromkeys(n.strip() for n in names.split(",") if n.strip()))
    unknown = [n for n in wanted if n not in KINDS]
    if unknown or not wanted:
        raise ValueError(f"unknown kind(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(KINDS)}")
    return [KINDS[n] for n in wanted]


def cloze_tasks(manifest: Manifest, kinds: Sequence[ClozeKind], n: int, seed: int,
                mirror_root: str | Path | None = None) -> list[ClozeTask]:
    """A task per kind, of ``n`` items each, cut from the passages held out of the manifest's `--sample` build."""
    if n < 1:
        raise ValueError(f"a task needs at least one item, got {n}")
    training = ngram_set(training_texts(manifest, mirror_root))
    tasks = []
    for kind in kinds:
        whole = kind.passages()
        passages = held_out(whole, training)
        tasks.append(ClozeTask(kind, cloze_items(kind, passages, n, seed), len(passages), len(whole), manifest.name,
                               seed))
    return tasks
