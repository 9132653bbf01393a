"""The live pipeline: one source's token chunks computed on Ray as training reads them, never written to disk.

The chunks come in the order a build's shards would hold them (units in plan order,
chunks in input order within a unit), because each unit is computed exactly as the
build computes it.

One :class:`UnitFeed` (a Ray actor when several ranks share it) serves a whole training
job: it starts one task per unit and hands the result (the unit's tokens and chunk offsets, in Ray's object store)
to every rank that asks for it, so each unit is tokenized once per pass whatever the
number of ranks. Ranks address units as (pass, index), which is what lets a resumed
run open each source at the unit where it stopped. Memory is bounded by the feed's
lookahead: per source it starts at most ``lookahead`` units beyond the furthest rank,
and it lets a unit go once every rank has asked for a later one (a rank keeps its own
reference while it reads the unit). :class:`FedUnits` is one rank's view of one source
and split, in the form ``corpus.mixing.chunk_streams.LiveChunks`` reads. A training job's
corpus (``pipelines.live_corpus.LiveCorpus``) opens the feed and reads it through these.

Validation while streaming holds out whole units: per source, the
``val_chunk_count(units, f)`` units (ceil(f * units), at least one, never all; none for a
one-unit source) whose keyed hash of the unit's key is lowest. The ``train`` split of the
stream skips them without tokenizing them, the ``val`` split tokenizes only them, so a few
held-out batches gather as fast as one unit tokenizes, the choice is the same on every rank
and after a resume (a pure function of the plan and the manifest's seed), and no held-out
chunk is ever trained on.

Faults: a unit whose worker process dies (killed, out of memory, node lost) is rerun by Ray, up to
``WORKER_RETRIES`` times, and the stream goes on with the same chunks. A unit that fails for good (its
input unreadable or corrupt, or its worker dying on every try) ends the stream with a :class:`StreamError`
naming the source, the unit and its input: a stream never skips a unit.
"""
from __future__ import annotations

import math
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping

import numpy as np

from corpus.cleaning.contamination import Decontamination
from corpus.manifest import Manifest
from corpus.mixing.chunk_streams import SPLITS, val_chunk_count
from corpus.mixing.permutation import derive_key
from corpus.tokenizer.tokenizer import Tokenizer
from pipelines.plan import DEFAULT_UNIT_BYTES, WorkUnit, plan_source, source_files
from pipelines.runner import unit_task
from pipelines.worker import UnitJob, tokenize_unit


WORKER_RETRIES = 3  # reruns of a unit whose worker process died, before the stream gives up on it


class StreamError(RuntimeError):
    """A unit of the stream failed for good; the stream stops rather than skip data silently.

    One line: the source, the unit, its input and the cause (the task's own exception, not Ray's traceback).
    """

    def __init__(self, unit: WorkUnit, cause: BaseException):
        self.source, self.unit, self.input = unit.source, unit.key, unit.slice.describe()
        inner = getattr(cause, "cause", None)  # a RayTaskError carries the task's exception
        # else the worker died on every try (WorkerCrashedError and kin), which Ray's own first line says
        error = inner if isinstance(inner, BaseException) else cause
        kind = type(error).__name__ if type(error).__module__ == "builtins" else \
            f"{type(error).__module__}.{type(error).__name__}"  # zlib.error, not a bare "error"
        first = (str(error).strip().splitlines() or [""])[0]
        self.cause = f"{kind}: {first}" if first else kind
        super().__init__(f"source {self.source}, unit {self.unit}, input {self.input}: {self.cause}")


def held_out_units(units: list[WorkUnit], fraction: float, seed: int) -> set[str]:
    """Keys of the units held out for validation: the ``val_chunk_count(len(units), fraction)`` lowest by keyed hash."""
    ranked = sorted(units, key=lambda u: derive_key("live-val-unit", seed, u.key))
    return {u.key for u in ranked[:val_chunk_count(len(units), fraction)]}


def stream_units(manifest: Manifest, source_name: str, sample: bool = False, unit_bytes: int = DEFAULT_UNIT_BYTES,
                 mirror_root: str | None = None, split: str | None = None,
                 val_fraction: float = 0.0) -> list[WorkUnit]:
    """The units a stream of ``split`` reads, in plan order (``None``: every unit)."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    source = manifest.source(source_name)
    units = plan_source(source, source_files(manifest, source, sample, mirror_root), unit_bytes)
    return units if split is None else split_units(units, val_fraction, manifest.seed)[split]


def split_units(units: list[WorkUnit], val_fraction: float, seed: int) -> dict[str, list[WorkUnit]]:
    """A source's planned units by split, each in plan order: the held-out ones are ``val``, the rest ``train``."""
    held = held_out_units(units, val_fraction, seed)
    return {split: [u for u in units if (u.key in held) == (split == "val")] for split in SPLITS}


Key = str          # "<source>/<split>": one stream the feed serves
Place = tuple[int, int]  # (pass, unit index): a unit's place in a stream, ordered
FEED_NAMESPACE = "elm-corpus"


def stream_key(source: str, split: str) -> Key:
    return f"{source}/{split}"


class UnitFeed:
    """The tasks of a job's live streams, each unit started once and shared by every rank (in the one process,
    or as a Ray actor the ranks share).

    ``plans``: per stream key, its units (``WorkUnit.to_dict``) in plan order. ``lookahead``: per key, how
    many units beyond the one asked for are started ahead. ``world_size``: the ranks that read; a unit is let go
    once all of them have asked for a later one. ``env``: environment variables the tasks run with.
    """

    def __init__(self, job: UnitJob, plans: dict[Key, list[dict]], lookahead: dict[Key, int], world_size: int,
                 retries: int = 0, env: dict[str, str] | None = None):
        import ray
        self._job = ray.put(job)
        self._task = unit_task(tokenize_unit, retries, env)
        self._plans, self._lookahead = plans, lookahead
        self._refs: dict[Key, dict[Place, object]] = {key: {} for key in plans}
        self._at: dict[Key, list[Place | None]] = {key: [None] * world_size for key in plans}
        self._started: Counter = Counter()  # (key, pass, index) -> tasks started for it
        self._furthest: dict[Key, Place] = {}
        self._most_held = 0

    def units(self, key: Key) -> int:
        return len(self._plans[key])

    def unit(self, key: Key, place: Place, rank: int) -> tuple[dict, list]:
        """The unit at ``place`` of stream ``key`` and (in a list, so Ray passes it on unresolved) its result's ref.

        ``rank`` is done with every unit before ``place``.
        """
        refs, n = self._refs[key], len(self._plans[key])
        place = (int(place[0]), int(place[1]))
        ahead = place
        for _ in range(1 + self._lookahead.get(key, 0)):
            if ahead not in refs:
                refs[ahead] = self._task.remote(self._job, self._plans[key][ahead[1]])
                self._started[(key, *ahead)] += 1
                self._furthest[key] = max(self._furthest.get(key, ahead), ahead)
            ahead = (ahead[0], ahead[1] + 1) if ahead[1] + 1 < n else (ahead[0] + 1, 0)
        ref = refs[place]
        at = self._at[key]
        at[rank] = place
        if all(a is not None for a in at):
            slowest = min(at)
            for done in [p for p in refs if p < slowest]:
                del refs[done]
        self._most_held = max(self._most_held, sum(len(r) for r in self._refs.values()))
        return self._plans[key][place[1]], [ref]

    def furthest(self) -> dict[Key, Place]:
        """Per stream, the furthest unit started: what a checkpoint taken now has tokenized ahead of its position."""
        return dict(self._furthest)

    def report(self) -> dict:
        """Tasks started (``units_tokenized``), of which for a unit started before (``units_tokenized_again``: a
        unit let go and asked for again), the most unit results the feed held at once, and per stream its count
        and the first and last (pass, unit) started."""
        again = sum(c - 1 for c in self._started.values())
        streams: dict[Key, dict] = {}
        for (key, passes, index), count in sorted(self._started.items()):
            entry = streams.setdefault(key, {"units_tokenized": 0, "first": [passes, index]})
            entry["units_tokenized"] += count
            entry["last"] = [passes, index]
        return {"units_tokenized": sum(self._started.values()), "units_tokenized_again": again,
                "most_units_held": self._most_held, "streams": streams}


def split_window(weights: Mapping[str, float], window: int) -> dict[str, int]:
    """Per source with weight, its share of ``window`` units of lookahead (by weight, at least one)."""
    total = sum(w for w in weights.values() if w > 0)
    return {name: max(1, math.floor(window * w / total)) for name, w in weights.items() if w > 0}


def open_feed(manifest: Manifest, streams: Mapping[Key, list[WorkUnit]], lookahead: Mapping[Key, int],
              world_size: int = 1, env: dict[str, str] | None = None, dedup_dir: str | None = None,
              decontaminate: Decontamination | None = None):
    """A :class:`UnitFeed` on the Ray this process is connected to; returns (feed, name).

    ``dedup_dir``: for a manifest that deduplicates, the folder `elm-corpus dedup` wrote its removals to
    (:func:`pipelines.dedup.live_removals`); the units leave those records out, as the build's do.
    ``decontaminate``: the task n-grams no served document may hold (``pipelines.build.decontamination``).

    For one reader it lives in this process (name None): an actor's start, a new worker process, costs a
    few tenths of a second that a single process gains nothing for. For several it is an actor, whose name
    (in namespace ``FEED_NAMESPACE``) is how the other ranks find it (:func:`join_feed`).
    """
    import ray
    tokenizer = Tokenizer(manifest.tokenizer.model, manifest.text.normalize)
    sources = [manifest.source(name) for name in dict.fromkeys(key.split("/")[0] for key in streams)]
    args = (UnitJob.of(manifest, tokenizer, sources, dedup_dir, decontaminate),
            {k: [u.to_dict() for u in units] for k, units in streams.items()}, dict(lookahead), world_size,
            WORKER_RETRIES, env)
    if world_size == 1:
        return UnitFeed(*args), None
    name = f"unit-feed-{uuid.uuid4().hex[:12]}"
    feed = ray.remote(num_cpus=0)(UnitFeed).options(name=name, namespace=FEED_NAMESPACE).remote(*args)
    # An actor is created asynchronously: a first answered call guarantees its name is registered before the
    # other ranks look it up by name.
    ray.get(feed.furthest.remote())
    return feed, name


def join_feed(name: str):
    import ray
    return ray.get_actor(name, namespace=FEED_NAMESPACE)


def close_feed(feed) -> None:
    if not isinstance(feed, UnitFeed):
        import ray
        ray.kill(feed, no_restart=True)


def _ask(feed, method: str, *args):
    """Call a feed's method, in this process or on its actor."""
    if isinstance(feed, UnitFeed):
        return getattr(feed, method)(*args)
    import ray
    return ray.get(getattr(feed, method).remote(*args))


def feed_furthest(feed) -> dict[Key, Place]:
    return _ask(feed, "furthest")


def feed_report(feed) -> dict:
    return _ask(feed, "report")


def feed_units_between(feed, key: Key, first: Place, last: Place) -> int:
    """Units from ``first`` through ``last`` of stream ``key`` (0 when ``last`` comes before ``first``)."""
    if tuple(last) < tuple(first):
        return 0
    n = _ask(feed, "units", key)
    return (last[0] - first[0]) * n + last[1] - first[1] + 1


class FedUnits:
    """One rank's reader of one stream of a feed: called with (pass, first unit), yields that pass's units from
    there to its end, each as its list of chunks (uint16 arrays, BOS ... EOS; views of the unit's result)."""

    def __init__(self, feed, key: Key, rank: int = 0):
        self.feed, self.key, self.rank = feed, key, rank
        self._units: int | None = None

    def __call__(self, passes: int, first: int) -> Iterator[list[np.ndarray]]:
        import ray
        if self._units is None:
            self._units = _ask(self.feed, "units", self.key)
        for index in range(first, self._units):
            unit, (ref,) = _ask(self.feed, "unit", self.key, (passes, index), self.rank)
            try:
                tokens, offsets = ray.get(ref)
            except Exception as e:
                raise StreamError(WorkUnit.from_dict(unit), e) from e
            bounds = offsets.tolist()
            yield [tokens[a:b] for a, b in zip(bounds, bounds[1:])]

