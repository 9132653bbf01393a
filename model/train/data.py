"""The trainer's one door to the data: a corpus, built or live, as micro-batches of (inputs, targets).

Every import of the data side (`corpus.mixing`, `corpus.store`, `pipelines`) by the trainer is
here (tests/test_layout.py holds the rule). This module chooses and opens a corpus
(`corpus.mixing.corpus_source.CorpusSource`) and builds this rank's batches from the samplers it
gives; it holds nothing of how a corpus is served. `resolve_corpus` finds a built corpus and refuses
one that is missing or unfinished with what to run; a corpus on an object store (`s3://...`) is read
from a local copy that `corpus.store.cache` keeps checked against the ledger. `resolve_stream` opens
the live corpus of a manifest (`pipelines.live_corpus`), whose sources are tokenized on Ray.
`TrainingData.train_batches` and `held_out` are what the `Trainer` reads; another data source
(fine-tuning examples) only has to offer the same two.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from corpus.mixing.corpus_source import BuiltCorpus, CorpusError, CorpusSource, LivePipeline, Sampling
from corpus.mixing.packing import IGNORE_INDEX  # noqa: F401  (re-exported: the target value the loss skips)
from corpus.store.files import sha256_file
from corpus.store.shards import ShardDamaged
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
    """The corpus failed for good while read (a unit of the live pipeline: its worker retries spent, or its input
    unreadable): training stops rather than skip it."""


@contextmanager
def _reading() -> Iterator[None]:
    """Reading the corpus: its failure for good stops training as a DataStopped."""
    try:
        yield
    except CorpusError as e:
        raise DataStopped(str(e)) from e


class MicroBatches:
    """(inputs, targets) micro-batches of this rank from a `MixtureSampler`, read in this process.

    No DataLoader workers: the sampler then counts what was taken, and its state after the
    last micro-batch of a step is exactly where a resumed run must start. ``live``: the pipeline
    that computes the corpus (None for a built one); what it started ahead goes along in the state.
    """

    def __init__(self, sampler, device, live: LivePipeline | None = None):
        self.sampler = sampler
        self.device = device
        self.live = live
        self._batches: Iterator[dict] | None = None  # opened on first use, after any resume
        self._reread = 0

    def next(self) -> Batch:
        with _reading():
            if self._batches is None:
                self._batches = self.sampler.batches()
            batch = next(self._batches)
        return batch["input_ids"].to(self.device, non_blocking=True), batch["labels"].to(self.device, non_blocking=True)

    def state_dict(self) -> dict:
        with _reading():  # a live state looks ahead in the streams
            state = self.sampler.state_dict()
        if self.live is not None:
            # what the pipeline had started ahead: a resume from this state tokenizes those units again
            state["started_ahead"] = self.live.started_ahead()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
        if self.live is not None:
            self._reread = self.live.units_reread(state)

    def shares(self) -> dict:
        with _reading():
            return _plain(self.sampler.shares())

    def units_reread(self) -> int:
        """Units the resumed stream tokenizes again: per source, the one it stopped in and those started ahead."""
        return self._reread

    def pipeline(self) -> dict | None:
        return self.live.report() if self.live is not None else None


def _plain(value: Any) -> Any:
    """Sampler share tables as JSON-ready data."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


@dataclass
class TrainingData:
    """The trainer's `DataSource` for pretraining: a corpus, built or (`--stream`) live, as micro-batches."""
    corpus: CorpusSource

    @property
    def tokenizer(self) -> dict:
        """spec, sha256, vocab_size (what an evaluator while training decodes with)."""
        return self.corpus.tokenizer

    def train_batches(self, cfg: TrainConfig, cluster: Cluster) -> MicroBatches:
        sampler = self.sampler(cfg, "train", cluster)  # a live corpus starts here
        return MicroBatches(sampler, cluster.device, self.corpus if isinstance(self.corpus, LivePipeline) else None)

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
                # a built corpus holds out chunks of every source it can; a live one may hold out no unit at all
                if not isinstance(self.corpus, LivePipeline):
                    raise
                why_none = f"no validation while streaming: {e}"
            except EmptySplit as e:
                # A live source's held-out units gave no chunk (every document filtered, or a small unit inside one
                # long document). Validate on the others.
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
        """This rank's share of the mixture. ``left_out``: sources validation skips."""
        sampling = Sampling(cfg.sequence_length, cfg.weights, cfg.sampler_mode, cfg.seed, cfg.micro_batch_size)
        try:
            return self.corpus.sampler(split, cluster, sampling, left_out)
        except CorpusError as e:
            raise TrainError(str(e)) from None
        except ShardDamaged as e:
            raise TrainError(f"{e}: the corpus is damaged; run 'elm-corpus verify {self.corpus.where()}' to find "
                             f"every damaged unit, then with --repair, and rerun the build it prints") from None
        except ValueError as e:
            raise TrainError(f"cannot sample {self.corpus.where()} ({split} split): {e}") from None

    def close(self) -> None:
        self.corpus.close()


def resolve_data(cfg: TrainConfig) -> TrainingData:
    """The data a run's settings name: `--stream` of a manifest, else the built `--corpus`."""
    return TrainingData(resolve_stream(cfg) if cfg.stream
                        else resolve_corpus(cfg.corpus, cfg.corpus_cache, weights=cfg.weights))


def resolve_corpus(name_or_dir: str | None, cache: str | Path | None = None,
                   weights: dict[str, float] | None = None) -> BuiltCorpus:
    """A built corpus by folder, by name under the corpora folder, or by URI; a missing or unfinished one is refused.

    A corpus on an object store is brought into its local copy under ``cache`` (default
    ``<data root>/cache``) first: each shard of the sources the run reads (positive ``weights``, default the
    manifest's shares) downloaded once, checked against its ledger sha256.
    """
    from corpus.paths import corpora_root
    from corpus.store.layout import NotACorpus, find_corpus, read_corpus_json
    from corpus.store.location import ObjectPath
    if not name_or_dir:
        raise TrainError(f"no corpus given: pass --corpus NAME (a corpus under {corpora_root()}), a corpus folder "
                         f"or URI; build the sample one with '{SAMPLE_BUILD_HINT}' (--corpus openelm-sample)")
    try:
        found = find_corpus(name_or_dir)
        folder, uri = ((_cached(found, cache, weights), str(found)) if isinstance(found, ObjectPath)
                       else (found, None))
    except (NotACorpus, ConnectionError) as e:
        raise TrainError(str(e)) from None
    where = uri or folder
    try:
        info = read_corpus_json(folder)
    except FileNotFoundError:
        raise TrainError(f"{where} holds no corpus.json, so its build never finished; rerun 'elm-corpus build' "
                         f"with the same manifest to complete it") from None
    except ValueError as e:  # damaged: `elm-corpus verify` says what else is, and `--repair` rebuilds it
        raise TrainError(f"{where}/corpus.json cannot be read: {e}; check it with 'elm-corpus verify {where}'") \
            from None
    tokenizer = info.get("tokenizer") or {}
    if not tokenizer.get("vocab_size") or not tokenizer.get("sha256"):
        raise TrainError(f"{where}/corpus.json records no tokenizer (vocab_size, sha256); rebuild it with "
                         f"'elm-corpus build'")
    if int(info.get("totals", {}).get("tokens", 1)) <= 0:
        raise TrainError(f"{where}: the corpus holds no tokens; check 'elm-corpus stats {where}' for what was dropped")
    # The folder's name is what --corpus takes (a sample build of manifest 'openelm' is 'openelm-sample').
    return BuiltCorpus(found.name, folder, info.get("manifest_fingerprint"),
                       {k: tokenizer.get(k) for k in ("spec", "sha256", "vocab_size")}, uri=uri)


def _cached(root, cache: str | Path | None, weights: dict[str, float] | None) -> Path:
    """The local copy of the corpus at ``root`` on an object store, brought up to date with its ledger for the
    sources the run reads."""
    from corpus.manifest import Manifest
    from corpus.mixing.sources import sampled_sources
    from corpus.paths import cache_root
    from corpus.store.cache import CacheError, cache_corpus

    def sampled(index: dict) -> list[str] | None:
        dump = (index.get("manifest") or {}).get("dump")
        return sampled_sources(weights, Manifest.model_validate(dump)) if dump else None
    try:
        return cache_corpus(root, cache if cache is not None else cache_root(), sampled).folder
    except CacheError as e:
        raise TrainError(str(e)) from None


def resolve_stream(cfg: TrainConfig) -> CorpusSource:
    """The live corpus of `--manifest` (default manifests/openelm.yaml): its sources tokenized on Ray as the run
    reads them (`pipelines.live_corpus`)."""
    from pipelines.live_corpus import LiveCorpus
    try:
        return LiveCorpus.open(cfg.manifest or DEFAULT_MANIFEST, name=cfg.corpus, sample=cfg.stream_sample,
                               workers=cfg.stream_workers, address=cfg.ray_address, unit_bytes=cfg.stream_unit_bytes)
    except (OSError, ValueError, RuntimeError) as e:
        raise TrainError(f"--stream: {e}") from None


def check_vocabulary(corpus: CorpusSource, model_config: OpenELMConfig, where: str) -> None:
    tok = corpus.tokenizer
    if int(tok["vocab_size"]) != model_config.vocab_size:
        raise TrainError(
            f"{corpus.where()} was tokenized with {tok.get('spec')} ({tok['vocab_size']} pieces), but the model "
            f"({where}) has a vocabulary of {model_config.vocab_size}. Train with --vocab-size {tok['vocab_size']} "
            f"(a fresh model), or rebuild the corpus with a {model_config.vocab_size}-piece tokenizer "
            f"(tokenizer.model in the manifest, then 'elm-corpus build MANIFEST')")


def check_init_tokenizer(init_from: str | None, corpus: CorpusSource) -> None:
    """A starting checkpoint that ships its tokenizer must share the corpus's."""
    if not init_from:
        return
    beside = Path(init_from) / "tokenizer.model"
    if beside.is_file():
        sha = sha256_file(beside)
        if sha != corpus.tokenizer["sha256"]:
            raise TrainError(f"{beside} (sha256 {sha[:12]}) is not the tokenizer {corpus.where()} uses (sha256 "
                             f"{corpus.tokenizer['sha256'][:12]}); rebuild the corpus with it")
