"""The trainer's one door to the data: a built corpus or a live stream, as micro-batches of (inputs, targets).

Every import of the data side (`corpus.mixing`, `corpus.store`, `pipelines`) by the trainer is
here (tests/test_layout.py holds the rule). `resolve_corpus` finds a built corpus and refuses
one that is missing or unfinished with what to run; a corpus on an object store (`s3://...`)
is read from a local copy that `corpus.store.cache` keeps checked against the ledger.
`resolve_stream` names a manifest whose sources are tokenized live on Ray. `TrainingData.train_batches` and `held_out` are what the
`Trainer` reads; another data source (fine-tuning examples) only has to offer the same two.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from corpus.mixing.packing import IGNORE_INDEX  # noqa: F401  (re-exported: the target value the loss skips)
from corpus.store.files import sha256_file
from model.config import OpenELMConfig
from model.train.config import TrainConfig, TrainError
from model.train.distributed import Cluster

SAMPLE_BUILD_HINT = "elm-corpus build manifests/openelm.yaml --sample"
DEFAULT_MANIFEST = "manifests/openelm.yaml"

Batch = tuple[Tensor, ...]  # (inputs, targets, *extras): inputs and targets (micro batch size, length), on the device


class BatchSource(Protocol):
    """What the trainer reads training batches from, in every run; its state is saved in every checkpoint."""

    def next(self) -> Batch: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@runtime_checkable
class MixtureReport(Protocol):
    """What batches drawn from a mixture of sources (pretraining's `MicroBatches`) also report; the trainer
    records it when its batches offer it."""

    def shares(self) -> dict: ...  # JSON-ready per-source shares, for the `mixture` record
    def units_reread(self) -> int: ...  # input units the last load_state_dict makes the data read again, for `resume`
    def pipeline(self) -> dict | None: ...  # JSON-ready state of a live pipeline, for the `stream` record (None: none)


class DataSource(Protocol):
    """What the trainer trains and validates on (`TrainingData` here; fine-tuning examples elsewhere)."""

    def train_batches(self, cfg: TrainConfig, cluster: Cluster) -> BatchSource: ...
    def held_out(self, cfg: TrainConfig, cluster: Cluster) -> tuple[list[Batch], str | None]: ...
    def close(self) -> None: ...  # the run is over: let go of what serves the data


class DataStopped(TrainError):
    """A unit of the live pipeline failed for good (its worker retries spent, or its input unreadable): training
    stops rather than skip it."""


class LiveUnits:
    """A rank's reader of one stream of the live pipeline (`pipelines.stream.FedUnits`), whose failure for good
    stops training as a `DataStopped`."""

    def __init__(self, fed):
        self.fed = fed

    def __call__(self, passes: int, first: int) -> Iterator[Any]:
        from pipelines.stream import StreamError
        try:
            yield from self.fed(passes, first)
        except StreamError as e:
            raise DataStopped(f"the live pipeline stopped: {e}") from e


class MicroBatches:
    """(inputs, targets) micro-batches of this rank from a `MixtureSampler`, read in this process.

    No DataLoader workers: the sampler then counts what was taken, and its state after the
    last micro-batch of a step is exactly where a resumed run must start. ``feed``: the live
    pipeline the sampler's streams read (None for a built corpus); its state goes along.
    """

    def __init__(self, sampler, device, feed=None):
        self.sampler = sampler
        self.device = device
        self.feed = feed
        self._batches: Iterator[dict] | None = None  # opened on first use, after any resume
        self._reread = 0

    def next(self) -> Batch:
        if self._batches is None:
            self._batches = self.sampler.batches()
        batch = next(self._batches)
        return batch["input_ids"].to(self.device, non_blocking=True), batch["labels"].to(self.device, non_blocking=True)

    def state_dict(self) -> dict:
        state = self.sampler.state_dict()
        if self.feed is not None:
            # what the pipeline had started ahead: a resume from this state tokenizes those units again
            from pipelines.stream import feed_furthest
            state["started_ahead"] = {k: list(place) for k, place in feed_furthest(self.feed).items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
        if self.feed is not None:
            from pipelines.stream import feed_units_between, stream_key
            ahead = state.get("started_ahead", {})
            self._reread = 0
            for name, point in state.get("streams", {}).items():
                key = stream_key(name, "train")
                if key in ahead:
                    self._reread += feed_units_between(self.feed, key, (point["passes"], point["unit"]),
                                                       tuple(ahead[key]))

    def shares(self) -> dict:
        return _plain(self.sampler.shares())

    def units_reread(self) -> int:
        """Units the resumed stream tokenizes again: per source, the one it stopped in and those started ahead."""
        return self._reread

    def pipeline(self) -> dict | None:
        if self.feed is None:
            return None
        from pipelines.stream import feed_report
        return feed_report(self.feed)


def _plain(value: Any) -> Any:
    """Sampler share tables as JSON-ready data."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value



def _start_ray(**kwargs) -> None:
    """Ray for the live pipeline; an environment that turns its authentication off is refused as a TrainError."""
    from pipelines.runner import RayAuthRefused, start_ray
    try:
        start_ray(**kwargs)
    except RayAuthRefused as e:
        raise TrainError(str(e)) from None


@dataclass
class TrainingData:
    """Where the tokens come from: a built corpus folder, or (`--stream`) the live pipelines of a manifest."""
    name: str
    folder: Path | None      # the built corpus (for one on an object store, its local copy); None when streaming
    fingerprint: str | None  # the manifest fingerprint the shards were (or would be) built with
    tokenizer: dict          # spec, sha256, vocab_size
    manifest: Any = None     # streaming only: the manifest whose sources are tokenized on the fly
    sample: bool = False     # streaming only: read the offline sample mirror
    uri: str | None = None   # a corpus on an object store: its URI (``folder`` is then the local copy)
    feed: Any = None         # streaming only: the live pipeline's feed, once opened (`pipelines.stream.UnitFeed`)
    plans: dict | None = None  # streaming only: the weighted sources' units per stream key, planned once
    feed_owner: bool = False  # this rank opened the feed (rank 0), so it closes it

    def where(self) -> str:
        if self.uri is not None:
            return self.uri
        return str(self.folder) if self.folder is not None else f"the live pipeline of manifest {self.manifest.name}"

    def describe(self) -> dict:
        """run.json's `corpus` entry."""
        described = {"name": self.name, "dir": str(self.folder.resolve()) if self.folder is not None else None,
                     "fingerprint": self.fingerprint}
        if self.uri is not None:
            described.update(dir=self.uri, cache=str(self.folder.resolve()))
        return described

    def train_batches(self, cfg: TrainConfig, cluster: Cluster) -> MicroBatches:
        sampler = self.sampler(cfg, "train", cluster)  # opens the live pipeline's feed when streaming
        return MicroBatches(sampler, cluster.device, self.feed)

    def held_out(self, cfg: TrainConfig, cluster: Cluster) -> tuple[list[Batch], str | None]:
        """This rank's share of `eval_batches` held-out micro-batches, or none and why (or a note on what they
        leave out)."""
        from corpus.mixing.chunk_streams import EmptySplit
        # Ranks share the held-out batches (rounded up to a multiple of the world size, so every rank runs
        # the same number of forwards): any world size evaluates the same sequences.
        per_rank = -(-cfg.eval_batches // cluster.world_size)
        left_out: list[str] = []
        while True:
            batches, empty, why_none = [], None, None
            try:
                stream = MicroBatches(self.sampler(cfg, "val", cluster, left_out), cluster.device)
                batches = [stream.next() for _ in range(per_rank)]
            except DataStopped:
                raise
            except TrainError as e:
                if self.folder is not None:
                    raise
                why_none = f"no validation while streaming: {e}"
            except EmptySplit as e:
                # Streaming: the held-out units of a source gave no chunk (every document filtered, or a small unit
                # inside one long document). Validate on the others.
                empty = e.source
            except (StopIteration, ValueError) as e:
                why_none = f"no validation: the held-out split gives no batch ({e})"
            # A rank meets only the sources of its own sequences: all ranks agree on what is left out, or
            # they would validate on different mixtures (and one would wait in a collective the others skip).
            outcomes = cluster.gather((empty, why_none))
            empties = sorted({e for e, _ in outcomes if e is not None} - set(left_out))
            if empties:
                left_out.extend(empties)
                continue
            why_none = next((w for _, w in outcomes if w is not None), None)
            if why_none is not None:
                return [], why_none
            note = (f"validation leaves out {', '.join(left_out)}: the held-out units give no chunk"
                    if left_out else None)
            return batches, note

    def sampler(self, cfg: TrainConfig, split: str, cluster: Cluster, left_out: list[str] = ()):
        """This rank's share of the mixture. Ranks take alternate blocks of one micro-batch, so together
        they read exactly the sequences one process would. ``left_out``: streamed sources validation skips."""
        from corpus.mixing.sampler import MixtureSampler
        kwargs = dict(weights=cfg.weights, mode=cfg.sampler_mode, seed=cfg.seed, split=split, rank=cluster.rank,
                      world_size=cluster.world_size, batch_size=cfg.micro_batch_size)
        try:
            if self.folder is not None:
                return MixtureSampler(self.folder, cfg.sequence_length, **kwargs)
            if split == "val":
                kwargs["weights"] = self._held_out_weights(cfg, left_out)
            # The pipeline splits by whole units (pipelines.stream), so the sampler takes every chunk it serves.
            return MixtureSampler(None, cfg.sequence_length, streams=self._streams(cfg, split, cluster),
                                  manifest=self.manifest, presplit=True, **kwargs)
        except ValueError as e:
            raise TrainError(f"cannot sample {self.where()} ({split} split): {e}") from None

    def _streams(self, cfg: TrainConfig, split: str, cluster: Cluster) -> dict:
        from pipelines.stream import FedUnits, stream_key
        feed = self._open_feed(cfg, cluster)
        # sources without weight get a reader too, which the sampler never opens
        return {s.name: LiveUnits(FedUnits(feed, stream_key(s.name, split), cluster.rank))
                for s in self.manifest.sources}

    def _open_feed(self, cfg: TrainConfig, cluster: Cluster):
        """The job's one live pipeline: rank 0 starts Ray and the feed, the other ranks join them.

        Every rank calls this at the same point (its first sampler, in the Trainer's construction),
        since the feed's address reaches the others through a collective.
        """
        if self.feed is not None:
            return self.feed
        from corpus.store.location import store_environment
        from pipelines.stream import join_feed, open_feed, split_window, stream_key
        where = None
        if cluster.is_main:
            import ray
            # started here so that no single stream owns (and shuts down) Ray
            _start_ray(workers=cfg.stream_workers, address=cfg.ray_address)
            units = self._planned(cfg)
            ahead = {stream_key(name, "train"): n
                     for name, n in split_window(self._weights(cfg), 2 * cfg.stream_workers).items()}
            # held-out units are read once, at the first evaluation: none started ahead
            ahead.update({key: 0 for key in units if key not in ahead})
            # a cluster's nodes have none of this process's store settings: the tasks take them along
            env = store_environment() if cfg.ray_address else None
            self.feed, name = open_feed(self.manifest, units, ahead, cluster.world_size, env=env)
            self.feed_owner = True
            where = (ray.get_runtime_context().gcs_address, name)
        if cluster.distributed:
            address, name = cluster.gather(where)[0]
            if not cluster.is_main:
                _start_ray(address=cfg.ray_address or address, ship_code=False)
                self.feed = join_feed(name)
        return self.feed

    def close(self) -> None:
        """Stop the live pipeline (rank 0) or leave its Ray (the other ranks)."""
        if self.feed is None:
            return
        from pipelines.stream import close_feed
        if self.feed_owner:
            close_feed(self.feed)
        else:
            import ray
            ray.shutdown()
        self.feed = None

    def _weights(self, cfg: TrainConfig) -> dict[str, float]:
        from corpus.mixing.sources import mixture_weights
        return mixture_weights(cfg.weights, self.manifest)

    def _planned(self, cfg: TrainConfig) -> dict:
        """Per stream key, the units of the weighted sources' streams, planned once in this process (on the real
        upstream, planning lists its files). The others are never read, so never planned."""
        if self.plans is None:
            from corpus.mixing.sampler import DEFAULT_VAL_FRACTION
            from pipelines.stream import split_units, stream_key, stream_units
            self.plans = {}
            for name, weight in self._weights(cfg).items():
                if weight > 0:
                    every = stream_units(self.manifest, name, self.sample, cfg.stream_unit_bytes)
                    for split, units in split_units(every, DEFAULT_VAL_FRACTION, self.manifest.seed).items():
                        self.plans[stream_key(name, split)] = units
        return self.plans

    def _held_out_weights(self, cfg: TrainConfig, left_out: list[str] = ()) -> dict[str, float]:
        """The training weights, less the sources too small to hold out a unit (one-unit sources) and ``left_out``."""
        from pipelines.stream import stream_key
        weights, plans = self._weights(cfg), self._planned(cfg)
        for name, weight in weights.items():
            if name in left_out or (weight > 0 and not plans[stream_key(name, "val")]):
                weights[name] = 0.0
        if not any(w > 0 for w in weights.values()):
            raise ValueError("no weighted source holds out a unit that gives chunks for validation")
        return weights


def resolve_data(cfg: TrainConfig) -> TrainingData:
    """The data a run's settings name: `--stream` of a manifest, else the built `--corpus`."""
    return resolve_stream(cfg) if cfg.stream else resolve_corpus(cfg.corpus, cfg.corpus_cache)


def resolve_corpus(name_or_dir: str | None, cache: str | Path | None = None) -> TrainingData:
    """A built corpus by folder, by name under the corpora folder, or by URI; a missing or unfinished one is refused.

    A corpus on an object store is brought into its local copy under ``cache`` (default
    ``<data root>/cache``) first: each shard downloaded once, checked against its ledger sha256.
    """
    from corpus.paths import corpora_root
    from corpus.store.layout import NotACorpus, find_corpus, read_corpus_json
    from corpus.store.location import ObjectPath
    if not name_or_dir:
        raise TrainError(f"no corpus given: pass --corpus NAME (a corpus under {corpora_root()}), a corpus folder "
                         f"or URI; build the sample one with '{SAMPLE_BUILD_HINT}' (--corpus openelm-sample)")
    try:
        found = find_corpus(name_or_dir)
        folder, uri = (_cached(found, cache), str(found)) if isinstance(found, ObjectPath) else (found, None)
    except (NotACorpus, ConnectionError) as e:
        raise TrainError(str(e)) from None
    where = uri or folder
    try:
        info = read_corpus_json(folder)
    except FileNotFoundError:
        raise TrainError(f"{where} holds no corpus.json, so its build never finished; rerun 'elm-corpus build' "
                         f"with the same manifest to complete it") from None
    tokenizer = info.get("tokenizer") or {}
    if not tokenizer.get("vocab_size") or not tokenizer.get("sha256"):
        raise TrainError(f"{where}/corpus.json records no tokenizer (vocab_size, sha256); rebuild it with "
                         f"'elm-corpus build'")
    if int(info.get("totals", {}).get("tokens", 1)) <= 0:
        raise TrainError(f"{where}: the corpus holds no tokens; check 'elm-corpus stats {where}' for what was dropped")
    # The folder's name is what --corpus takes (a sample build of manifest 'openelm' is 'openelm-sample').
    return TrainingData(found.name, folder, info.get("manifest_fingerprint"),
                        {k: tokenizer.get(k) for k in ("spec", "sha256", "vocab_size")}, uri=uri)


def _cached(root, cache: str | Path | None) -> Path:
    """The local copy of the corpus at ``root`` on an object store, brought up to date with its ledger."""
    from corpus.paths import cache_root
    from corpus.store.cache import CacheError, cache_corpus
    try:
        return cache_corpus(root, cache if cache is not None else cache_root()).folder
    except CacheError as e:
        raise TrainError(str(e)) from None


def resolve_stream(cfg: TrainConfig) -> TrainingData:
    """The manifest to stream (`--manifest`, default manifests/openelm.yaml) and its tokenizer."""
    from corpus.manifest import load_manifest
    from corpus.paths import corpus_name
    from corpus.tokenizer.tokenizer import Tokenizer
    try:
        manifest = load_manifest(cfg.manifest or DEFAULT_MANIFEST)
        tokenizer = Tokenizer(manifest.tokenizer.model, manifest.text.normalize)
    except (OSError, ValueError, RuntimeError) as e:
        raise TrainError(f"--stream: {e}") from None
    return TrainingData(cfg.corpus or corpus_name(manifest.name, cfg.stream_sample), None,
                        manifest.build_fingerprint(tokenizer.sha256),
                        {"spec": tokenizer.spec, "sha256": tokenizer.sha256, "vocab_size": tokenizer.vocab_size},
                        manifest=manifest, sample=cfg.stream_sample)


def check_vocabulary(data: TrainingData, model_config: OpenELMConfig, where: str) -> None:
    tok = data.tokenizer
    if int(tok["vocab_size"]) != model_config.vocab_size:
        raise TrainError(
            f"{data.where()} was tokenized with {tok.get('spec')} ({tok['vocab_size']} pieces), but the model "
            f"({where}) has a vocabulary of {model_config.vocab_size}. Train with --vocab-size {tok['vocab_size']} "
            f"(a fresh model), or rebuild the corpus with a {model_config.vocab_size}-piece tokenizer "
            f"(tokenizer.model in the manifest, then 'elm-corpus build MANIFEST')")


def check_init_tokenizer(init_from: str | None, data: TrainingData) -> None:
    """A starting checkpoint that ships its tokenizer must share the corpus's."""
    if not init_from:
        return
    beside = Path(init_from) / "tokenizer.model"
    if beside.is_file():
        sha = sha256_file(beside)
        if sha != data.tokenizer["sha256"]:
            raise TrainError(f"{beside} (sha256 {sha[:12]}) is not the tokenizer {data.where()} uses (sha256 "
                             f"{data.tokenizer['sha256'][:12]}); rebuild the corpus with it")
