"""A corpus as pretraining reads it: :class:`CorpusSource`, whichever way its tokens come.

Two kinds implement it: :class:`BuiltCorpus`, the shards of a finished build on local disk,
and ``pipelines.live_corpus.LiveCorpus``, a manifest's sources tokenized on Ray as the training
job reads them. The trainer's door (``model/train/data.py``) opens one and builds its batches
from the samplers it gives, knowing nothing of shards or Ray. A corpus computed live also offers
:class:`LivePipeline`: what its pipeline had started when a checkpoint was taken, and its state.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from corpus.mixing.sampler import MixtureSampler


class CorpusError(RuntimeError):
    """A corpus that cannot serve: what computes it refused to start, or failed for good. The message is one line
    that says which and why."""


class Ranks(Protocol):
    """The processes of a training job that read one corpus together (the trainer's `Cluster`)."""

    rank: int
    world_size: int

    def gather(self, value: Any) -> list[Any]: ...  # every rank's value, in rank order (a collective)


@dataclass(frozen=True)
class Sampling:
    """How a run samples the corpus it reads, whichever kind it is."""

    sequence_length: int
    weights: Mapping[str, float] | None = None  # None: the manifest's target shares
    mode: str = "pack"
    seed: int = 0
    batch_size: int = 1  # per rank: the sharding unit

    def sampler(self, split: str, ranks: Ranks, **mixed) -> MixtureSampler:
        """This rank's `MixtureSampler` of ``split`` over what ``mixed`` names: ``corpus_dir``, or ``streams`` with
        their ``manifest`` (and ``weights`` in place of the run's). Ranks take alternate blocks of one batch, so
        together they read exactly the sequences one process would."""
        from corpus.mixing.sampler import MixtureSampler  # its imports (manifest schema, shard store) once needed
        return MixtureSampler(**{"sequence_length": self.sequence_length, "weights": self.weights, "mode": self.mode,
                                 "seed": self.seed, "split": split, "rank": ranks.rank,
                                 "world_size": ranks.world_size, "batch_size": self.batch_size, **mixed})


class CorpusSource(Protocol):
    """What pretraining reads: a corpus's facts for run.json and the checks, and its samplers per split."""

    name: str                # what run.json calls it (a sample build of manifest 'openelm' is 'openelm-sample')
    fingerprint: str | None  # the manifest fingerprint its shards were (or would be) built with
    tokenizer: dict          # spec, sha256, vocab_size

    def where(self) -> str:
        """The corpus as messages name it."""
        ...

    def describe(self) -> dict:
        """run.json's `corpus` entry."""
        ...

    def sampler(self, split: str, ranks: Ranks, sampling: Sampling, left_out: Collection[str] = ()) -> MixtureSampler:
        """This rank's sampler of ``split``; every rank asks at the same point (a live corpus starts there, in a
        collective). ``left_out``: sources whose held-out split gave no chunk, which validation skips.

        Raises ValueError when ``sampling`` does not fit the corpus, CorpusError when it cannot serve; reading
        the sampler raises CorpusError when the corpus fails for good.
        """
        ...

    def close(self) -> None:
        """The run is over: let go of what serves the corpus."""
        ...


@runtime_checkable
class LivePipeline(Protocol):
    """What a corpus computed live by a pipeline (``pipelines.live_corpus.LiveCorpus``) also offers."""

    def started_ahead(self) -> dict:
        """JSON-ready, saved beside the sampler's state: per stream, the furthest unit the pipeline started."""
        ...

    def units_reread(self, state: dict) -> int:
        """Input units a resume from ``state`` (a sampler state saved with its ``started_ahead``) computes again."""
        ...

    def report(self) -> dict:
        """JSON-ready state of the pipeline, for the `stream` record."""
        ...


@dataclass
class BuiltCorpus:
    """The shards of a finished build, in ``folder`` (for a corpus on an object store, its local copy)."""

    name: str
    folder: Path
    fingerprint: str | None
    tokenizer: dict
    uri: str | None = None  # a corpus on an object store: its URI

    def where(self) -> str:
        return self.uri if self.uri is not None else str(self.folder)

    def describe(self) -> dict:
        described = {"name": self.name, "dir": str(self.folder.resolve()), "fingerprint": self.fingerprint}
        if self.uri is not None:
            described.update(dir=self.uri, cache=str(self.folder.resolve()))
        return described

    def sampler(self, split: str, ranks: Ranks, sampling: Sampling, left_out: Collection[str] = ()) -> MixtureSampler:
        # ``left_out`` stays empty: only live streams raise EmptySplit; a built source holding out no chunk
        # already weighs 0 in the val split (MixedSources)
        return sampling.sampler(split, ranks, corpus_dir=self.folder)

    def close(self) -> None:
        pass  # memory maps, let go with the sampler
