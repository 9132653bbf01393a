"""The documents of the sample mirror: real text that installs offline, cut to the shapes upstream subsets hold.

Bible chapters and verses, Python standard-library sources and documentation, pydoc topics
(:mod:`corpus.mirror.text`), assembled into web pages, books, papers, Q&A pages and code
files, plus the documents that exercise every text rule (``EDGE_KINDS``).
"""
from __future__ import annotations

import random
import string
import unicodedata
from dataclasses import dataclass, field

from corpus.mirror import text as sample_text
from corpus.mirror.text import Passage

EDGE_KINDS = ("empty", "whitespace_only", "short", "punctuation_only", "non_nfc", "long",
              "near_256_tokens", "special_token_literal")


@dataclass
class Doc:
    """One record to write: its text (None for a record without one), edge-case kind and origin."""
    text: str | None
    origin: str
    title: str = ""
    kind: str | None = None
    bad: str | None = None
    info: dict = field(default_factory=dict)


def words(text: str) -> int:
    return text.count(" ") + 1  # the number of pieces text.split(" ") gives


def doc(p: Passage, **kw) -> Doc:
    return Doc(p.text, p.origin, p.title, **kw)


def chapter_runs(rng: random.Random, n: int, most: int) -> list[Doc]:
    """``n`` runs of 1..``most`` consecutive Bible chapters, starting at random chapters."""
    chapters = sample_text.kjv_chapters()
    out = []
    for start in sorted(rng.sample(range(len(chapters) - most), n)):
        run = chapters[start: start + rng.randint(1, most)]
        title = run[0].title if len(run) == 1 else f"{run[0].title} to {run[-1].title.split(', ')[-1]}"
        out.append(Doc("\n\n".join(c.text for c in run), run[0].origin, title))
    return out


def paragraph_docs(rng: random.Random, n: int, most: int) -> list[Doc]:
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


def code_files(rng: random.Random, n: int, lo: int = 800, hi: int = 12_000) -> list[Doc]:
    files = [p for p in sample_text.stdlib_sources() if lo <= len(p.text) <= hi]
    return [doc(p) for p in rng.sample(files, min(n, len(files)))]


def topic_docs() -> list[Doc]:
    return [doc(p) for p in sample_text.doc_topics()]


def module_articles() -> list[Doc]:
    """A plain article per documented module: its docstring, then one section per documented name."""
    out = []
    for mod, funcs in sample_text.stdlib_documented():
        parts = [mod.text] + [f"{f.signature}\n\n{f.docstring}" for f in funcs[:6]]
        out.append(Doc("\n\n".join(parts), mod.origin, mod.title))
    return out


def latex_papers() -> list[Doc]:
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


def qa_docs(rng: random.Random, n: int) -> list[Doc]:
    """Question-and-answer pages: the question is a documented name, the answer its docstring and code."""
    funcs = [f for _, fs in sample_text.stdlib_documented() for f in fs if len(f.source) < 6000]
    out = []
    for f in rng.sample(funcs, min(n, len(funcs))):
        summary = f.docstring.split("\n\n")[0]
        text = f"Q:\n\n{f.module}: {f.signature}\n\n{summary}\n\nA:\n\n{f.docstring}\n\n{f.source}"
        out.append(Doc(text, f"stdlib:{f.module}.{f.qualname}", f"{f.module}.{f.qualname}"))
    return out


def mixed_docs(rng: random.Random, n: int) -> list[Doc]:
    parts = [chapter_runs(rng, n // 4, 2), code_files(rng, n // 4), qa_docs(rng, n // 4),
             rng.sample(topic_docs(), n - 3 * (n // 4))]
    return [d for p in parts for d in p]


def edge_docs(style: str, rng: random.Random) -> list[Doc]:
    """Documents that exercise every text rule; ``style`` is 'prose' or 'code'."""
    chapters = sample_text.kjv_chapters()
    code = [p for p in sample_text.stdlib_sources() if len(p.text) > 2000]
    out = [Doc("", "sample:empty", kind="empty"),
           Doc("\n\n   \n\t\n", "sample:whitespace", kind="whitespace_only")]
    if style == "code":
        small = [p for p in sample_text.stdlib_sources() if 20 <= len(p.text.strip()) < 200]
        out += [doc(p, kind="short") for p in rng.sample(small, min(3, len(small)))]
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
            fits = [p for p in long_pool if lo <= words(p.text) <= hi]
            fits = fits or sorted((p for p in long_pool if words(p.text) >= lo), key=lambda p: words(p.text))[:1]
            out.append(doc(rng.choice(fits), kind="long"))
        else:
            start = rng.randrange(len(chapters) - 40)
            run = []
            while words("\n\n".join(c.text for c in run)) < lo:
                run.append(chapters[start + len(run)])
            out.append(Doc("\n\n".join(c.text for c in run), run[0].origin, run[0].title, kind="long"))
    out += near_boundary_docs(code if style == "code" else list(chapters), rng)
    if style == "code":
        out += [doc(p, kind="special_token_literal") for p in sample_text.special_token_code()]
    for d in out:
        if d.kind in ("long", "short", "non_nfc", "punctuation_only"):
            d.info["words"] = words(d.text)
    return out


def near_boundary_docs(pool: list[Passage], rng: random.Random) -> list[Doc]:
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
