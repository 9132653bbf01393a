"""Numbers as people read them, the same in the terminal, the HTML report and the CLI: ``-`` for unknown."""
from __future__ import annotations

from corpus.manifest import COUNT_SUFFIXES
from corpus.store.counts import DUPLICATE_REASONS
from corpus.text.rules import TOO_FEW_CHARS


def short_count(n: int | None, digits: int = 3) -> str:
    """1_234_567 -> '1.23M' (the suffixes a manifest's token counts take)."""
    if n is None:
        return "-"
    for suffix in ("T", "B", "M", "K"):
        if n >= COUNT_SUFFIXES[suffix]:
            return f"{n / COUNT_SUFFIXES[suffix]:.{digits}g}{suffix}"
    return str(n)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def grouped(x: float | None, digits: int = 0) -> str:
    """1234.5 -> '1,234' (or '1,234.5' with digits=1)."""
    return "-" if x is None else f"{x:,.{digits}f}"


def percent(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def dropped_cell(s: dict, reason: str) -> str:
    """Documents / chunks / tokens one reason dropped from a source (stats' numbers); '-' where the build never counts
    them: duplicates are removed before they are split, chunks under min_chars are never tokenized."""
    chunks = "-" if reason in DUPLICATE_REASONS else f"{s['chunks']['dropped'].get(reason, 0):,}"
    if reason == TOO_FEW_CHARS:
        tokens = "-"
    else:  # unknown for shards from a build that did not record dropped tokens
        tokens = "?" if s["tokens_dropped"] is None else short_count(s["tokens_dropped"].get(reason, 0))
    return f"{s['documents']['dropped'].get(reason, 0):,} / {chunks} / {tokens}"


def never_counted(reasons: list[str]) -> str | None:
    """What a '-' in the cells of :func:`dropped_cell` means for these drop reasons, or None when none shows one."""
    why = (["duplicates are removed whole, before splitting into chunks"] if set(DUPLICATE_REASONS) & set(reasons)
           else []) + (["chunks under min_chars are never tokenized"] if TOO_FEW_CHARS in reasons else [])
    return f"-: never counted ({'; '.join(why)})" if why else None
