"""Sources a build finished but that give the corpus little or nothing: a warning for each, in words.

A source that keeps no tokens (every record dropped or quarantined, or none read), or that loses
half or more of the records it read to quarantine (a binary file named `.jsonl`, the wrong
`format`, a text field under another name) is almost always a mistake in the manifest or the
input, not a property of the data; the build and `stats` say so instead of leaving it to a
reading of the numbers.
"""
from __future__ import annotations

QUARANTINE_SHARE = 0.5  # of the records read: from here on a source is more broken input than data


def source_warning(records_read: int, quarantined: int, tokens: int, units_done: int) -> str | None:
    """Why a source with `units_done` finished units is of little use, or None when it is not."""
    if units_done == 0:
        return None  # nothing finished yet: nothing to judge
    if tokens == 0:
        why = (f"all {records_read:,} records it read were dropped or quarantined" if records_read
               else "it read no records")
        return f"keeps no tokens: {why}; check its files and its format in the manifest"
    if records_read and quarantined >= QUARANTINE_SHARE * records_read:
        return (f"{quarantined:,} of its {records_read:,} records went to quarantine; check its files and its "
                f"format in the manifest (the quarantine holds each with its reason)")
    return None


def corpus_warnings(corpus_json: dict) -> dict[str, str]:
    """{source: warning} for the sources of a corpus.json that warrant one."""
    out = {}
    for name, source in (corpus_json.get("sources") or {}).items():
        totals = source.get("totals") or {}
        warning = source_warning(int(totals.get("documents_read", 0)), int(totals.get("quarantined", 0)),
                                 int(totals.get("tokens", 0)), int((source.get("units") or {}).get("done", 0)))
        if warning:
            out[name] = warning
    return out
