"""The mixture sampler on small built corpora: mixing, packing, shuffling, splits, sharding, resume."""
from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from corpus.manifest import Manifest
from corpus.mixing.sampler import MixtureSampler
from corpus.store.files import atomic_write_json

from corpus.store.writer import write_shard
BOS, EOS, PAD = 1, 2, 32000
L = 16


def chunk_tokens(source_index: int, chunk_id: int, length: int) -> list[int]:
    """A chunk whose body names its source and id, so every served token can be traced back."""
    return [BOS] + [3 + 1000 * source_index + chunk_id] * (length - 2) + [EOS]


def chunk_id_of(token: int) -> tuple[int, int]:
    return divmod(int(token) - 3, 1000)


def make_corpus(root: Path, sources: dict, *, shards: int = 2, seed: int = 0, split_seed: int = 7) -> Path:
    """A built-corpus folder: ``sources`` maps name -> (chunk lengths, manifest tokens or weight dict)."""
    entries = []
    for si, (name, (lengths, size)) in enumerate(sources.items()):
        chunks = [chunk_tokens(si, c, n) for c, n in enumerate(lengths)]
        per = -(-len(chunks) // shards)
        for u in range(shards):
            write_shard(root / "shards" / name / f"unit-{u:04d}", chunks[u * per:(u + 1) * per], {"source": name})
        entry = {"name": name, "group": "pile", "upstream": {"files": [f"{name}/*.jsonl"]}, "format": "jsonl"}
        entry.update(size if isinstance(size, dict) else {"tokens": size})
        entries.append(entry)
    manifest = Manifest.model_validate({"name": "tiny", "sources": entries, "seed": split_seed,
                                        "sequence_length": L})
    atomic_write_json(root / "corpus.json", {"manifest": {"path": "tiny.yaml", "dump": manifest.model_dump(mode="json")},
                                             "status": "complete", "tokenizer": {"bos_id": BOS, "eos_id": EOS}})
    return root


def lengths(n: int, seed: int, lo: int = 4, hi: int = 40) -> list[int]:
    return np.random.default_rng(seed).integers(lo, hi, size=n).tolist()


@pytest.fixture
def corpus(tmp_path):
    return make_corpus(tmp_path, {"web": (lengths(60, 1), "600B"), "code": (lengths(30, 2), "200B"),
                                  "wiki": (lengths(8, 3), "100B")})


def take(sampler, n: int) -> list[dict]:
    return list(islice(iter(sampler), n))


def same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x["index"] == y["index"] and x["source"] == y["source"] and torch.equal(x["input_ids"], y["input_ids"])
        and torch.equal(x["labels"], y["labels"]) for x, y in zip(a, b))


def served_tokens(sample: dict) -> int:
    return int((sample["labels"] != -100).sum())


# ---------------------------------------------------------------- mixing

@pytest.mark.parametrize("mode", ["pack", "corenet"])
def test_served_tokens_stay_within_one_sequence_of_target_shares_at_every_prefix(corpus, mode):
    sampler = MixtureSampler(corpus, mode=mode, block_chunks=8)
    targets = [600 / 900, 200 / 900, 100 / 900]  # the manifest's token counts
    got = [0, 0, 0]
    for sample in take(sampler, 400):
        got[sample["source"]] += served_tokens(sample)
        total = sum(got)
        assert all(abs(got[s] - targets[s] * total) <= L for s in range(3)), (sample["index"], got)
    shares = sampler.shares()
    assert [shares[n]["tokens"] for n in sampler.source_names] == got
    assert all(abs(shares[n]["achieved"] - t) < L / sum(got) for n, t in zip(sampler.source_names, targets))


def test_explicit_weights_override_the_manifest_token_counts(corpus):
    sampler = MixtureSampler(corpus, weights={"web": 1, "wiki": 1})
    sources = [s["source"] for s in take(sampler, 100)]
    assert sources.count(0) == sources.count(2) == 50 and 1 not in sources
    assert sampler.shares()["code"]["target"] == 0


def test_weights_naming_an_unknown_source_are_refused(corpus):
    with pytest.raises(ValueError, match=r"unknown sources \['books'\]"):
        MixtureSampler(corpus, weights={"web": 1, "books": 2})


def test_a_weighted_source_without_data_is_refused(tmp_path):
    root = make_corpus(tmp_path, {"web": (lengths(10, 1), "1B"), "empty": ([], "1B")})
    with pytest.raises(ValueError, match=r"\['empty'\] have no chunks in the train split"):
        MixtureSampler(root)
    assert MixtureSampler(root, weights={"web": 1}).shares()["empty"]["target"] == 0


def test_an_unfinished_corpus_is_served_with_a_warning(corpus):
    index = json.loads((corpus / "corpus.json").read_text())
    index["status"] = "partial"
    (corpus / "corpus.json").write_text(json.dumps(index))
    with pytest.warns(UserWarning, match="corpus status is 'partial'"):
        sampler = MixtureSampler(corpus)
    assert len(take(sampler, 5)) == 5


def test_small_sources_repeat_with_epochs_reported_and_large_ones_are_cut_short(tmp_path):
    root = make_corpus(tmp_path, {"web": (lengths(200, 1), "1B"), "wiki": (lengths(8, 3), "1B")})
    sampler = MixtureSampler(root, mode="corenet", val_fraction=0, block_chunks=8)
    seen = {0: [], 1: []}
    for s in take(sampler, 120):
        seen[s["source"]].append(chunk_id_of(s["input_ids"][1])[1])
    web, wiki = seen[0], seen[1]
    # Every epoch of the 8-chunk source is one full pass, each in its own order.
    epochs = [wiki[i:i + 8] for i in range(0, 24, 8)]
    assert all(sorted(e) == list(range(8)) for e in epochs) and epochs[0] != epochs[1]
    shares = sampler.shares()
    assert shares["wiki"]["epochs"] == len(wiki) / 8 > 3
    # The big source serves its share and no more: most of it is never reached.
    assert len(set(web)) == len(web) and shares["web"]["epochs"] == len(web) / 200 < 0.5


# ---------------------------------------------------------------- packing

def test_pack_windows_are_the_shuffled_chunks_concatenated_without_padding(tmp_path):
    root = make_corpus(tmp_path, {"web": (lengths(25, 4), "1B")})
    sampler = MixtureSampler(root, val_fraction=0, block_chunks=4)
    windows = [s["input_ids"].tolist() + [s["labels"][-1].item()] for s in take(sampler, 60)]
    assert all(s["labels"].ne(-100).all() for s in take(sampler, 60))
    stream = windows[0] + [t for w in windows[1:] for t in w[1:]]  # consecutive windows share one token
    assert all(windows[k][:-1] == stream[k * L:k * L + L] for k in range(60))
    # Cut the stream back into chunks: the first epoch holds every chunk exactly once, shuffled.
    chunks, current = [], []
    for t in stream:
        current.append(t)
        if t == EOS:
            chunks.append(current)
            current = []
    first_epoch = [chunk_id_of(c[1])[1] for c in chunks[:25]]
    assert sorted(first_epoch) == list(range(25)) and first_epoch != list(range(25))
    expected = lengths(25, 4)
    assert all(len(c) == expected[chunk_id_of(c[1])[1]] for c in chunks)


def test_a_source_smaller_than_one_sequence_fills_full_windows_by_repeating(tmp_path):
    root = make_corpus(tmp_path, {"tiny": ([5, 6], "1B")}, shards=1)  # 11 tokens, windows of 17
    samples = take(MixtureSampler(root, val_fraction=0), 4)
    assert all(s["labels"].ne(-100).all() for s in samples)
    stream = [t for s in samples for t in s["input_ids"].tolist()]  # inputs of consecutive windows abut
    epochs = [stream[i:i + 11] for i in range(0, 55, 11)]
    assert all(e in (chunk_tokens(0, 0, 5) + chunk_tokens(0, 1, 6), chunk_tokens(0, 1, 6) + chunk_tokens(0, 0, 5))
               for e in epochs)


def test_shuffle_order_follows_the_seed(tmp_path):
    root = make_corpus(tmp_path, {"web": (lengths(40, 5), "1B")})

    def order(seed):
        return [chunk_id_of(s["input_ids"][1])[1] for s in take(MixtureSampler(root, mode="corenet", seed=seed), 39)]
    assert order(3) == order(3) and order(3) != order(4)


def corenet_reference(tokens: list[int], sequence_length: int) -> tuple[list[int], list[int]]:
    """CoreNet's rule (base_lm._tokenize_text): keep min(n, L+1) tokens, right-pad with the pad id to L+1,
    samples = [:-1], targets = [1:], the loss ignoring pad targets."""
    valid = min(len(tokens), sequence_length + 1)
    content = [PAD] * (sequence_length + 1)
    content[:valid] = tokens[:valid]
    return content[:-1], content[1:]


def test_corenet_mode_truncates_and_pads_each_chunk_like_corenet(tmp_path):
    # Hand-made chunks: shorter than, exactly, one more than, and far longer than L + 1 tokens.
    sizes = [5, L, L + 1, L + 2, 3 * L, 3]
    root = make_corpus(tmp_path, {"web": (sizes, "1B")}, shards=1)
    served = take(MixtureSampler(root, mode="corenet", val_fraction=0), len(sizes))
    assert sorted(chunk_id_of(s["input_ids"][1])[1] for s in served) == list(range(len(sizes)))
    for sample in served:
        chunk_id = chunk_id_of(sample["input_ids"][1])[1]
        samples, targets = corenet_reference(chunk_tokens(0, chunk_id, sizes[chunk_id]), L)
        loss_positions = [t != PAD for t in targets]
        assert sample["labels"].tolist() == [t if keep else -100 for t, keep in zip(targets, loss_positions)]
        inputs = sample["input_ids"].tolist()
        assert [x for x, s in zip(inputs, samples) if s != PAD] == [s for s in samples if s != PAD]
        assert all(x == 0 for x, s in zip(inputs, samples) if s == PAD)  # pad_id 0 stays inside the vocabulary


# ---------------------------------------------------------------- validation split

def test_validation_chunks_are_held_out_per_source_and_never_trained_on(corpus):
    def chunks_of(split, n):
        ids = set()
        for s in take(MixtureSampler(corpus, mode="corenet", split=split, val_fraction=0.1), n):
            ids.add(chunk_id_of(s["input_ids"][1]))
        return ids
    val, train = chunks_of("val", 60), chunks_of("train", 600)
    assert not val & train
    assert val | train == {(s, c) for s, n in enumerate([60, 30, 8]) for c in range(n)}
    assert {s for s, _ in val} == {0, 1, 2} and len(val) == 6 + 3 + 1
    assert chunks_of("val", 60) == val  # the same chunks whatever the run


# ---------------------------------------------------------------- resume

@pytest.mark.parametrize("mode", ["pack", "corenet"])
def test_resuming_at_random_steps_gives_exactly_the_uninterrupted_stream(corpus, mode):
    full = take(MixtureSampler(corpus, mode=mode, block_chunks=4), 150)
    for cut in np.random.default_rng(0).integers(1, 150, size=5).tolist():
        first = MixtureSampler(corpus, mode=mode, block_chunks=4)
        head = take(first, cut)
        state = json.loads(json.dumps(first.state_dict()))  # a checkpoint survives JSON
        second = MixtureSampler(corpus, mode=mode, block_chunks=4)
        second.load_state_dict(state)
        assert same(head + take(second, 150 - cut), full), cut


def test_a_state_from_another_configuration_is_refused(corpus):
    state = MixtureSampler(corpus, mode="pack").state_dict()
    with pytest.raises(ValueError, match="mode: saved 'pack', now 'corenet'"):
        MixtureSampler(corpus, mode="corenet").load_state_dict(state)


def test_changed_weights_on_resume_continue_each_source_without_replaying_data(corpus):
    first = MixtureSampler(corpus)
    head = take(first, 90)
    second = MixtureSampler(corpus, weights={"web": 1, "code": 1, "wiki": 2})
    second.load_state_dict(first.state_dict())
    tail = take(second, 200)
    # Per source, the windows served before and after the change are that source's own stream, in order.
    for s, name in enumerate(second.source_names):
        served = [x["input_ids"] for x in head + tail if x["source"] == s]
        alone = take(MixtureSampler(corpus, weights={name: 1}), len(served))
        assert all(torch.equal(a, b["input_ids"]) for a, b in zip(served, alone)), name
    # The new targets hold from the change on, within one sequence.
    counts = [sum(1 for x in tail if x["source"] == s) for s in range(3)]
    assert all(abs(c - w * 200) <= 1 for c, w in zip(counts, [0.25, 0.25, 0.5]))
    shares = second.shares()
    assert shares["wiki"]["target"] == 0.5 and abs(shares["wiki"]["achieved"] - 0.5) <= 1 / 200
    assert shares["web"]["tokens"] == L * sum(1 for x in head + tail if x["source"] == 0)


# ---------------------------------------------------------------- sharding

def test_two_ranks_with_two_workers_each_cover_the_single_stream_exactly(corpus):
    batch, steps = 3, 6
    single = take(MixtureSampler(corpus, batch_size=batch, block_chunks=4), steps * 2 * batch)
    per_rank = []
    for rank in range(2):
        sampler = MixtureSampler(corpus, rank=rank, world_size=2, batch_size=batch, block_chunks=4)
        loader = DataLoader(sampler, batch_size=batch, num_workers=2)
        per_rank.append(list(islice(iter(loader), steps)))
    union = []
    for step in range(steps):
        for rank in range(2):
            b = per_rank[rank][step]
            union += [{"index": int(b["index"][i]), "source": int(b["source"][i]), "input_ids": b["input_ids"][i],
                       "labels": b["labels"][i]} for i in range(batch)]
    assert same(union, single)
    # The training process, told how many batches it consumed, knows where the whole stream stands.
    rank1 = MixtureSampler(corpus, rank=1, world_size=2, batch_size=batch, block_chunks=4)
    reference = MixtureSampler(corpus, batch_size=batch, block_chunks=4)
    take(reference, steps * 2 * batch)
    assert rank1.state_dict(batches=steps) == reference.state_dict()


def test_a_resume_may_change_world_size_and_batch_size(corpus):
    single = MixtureSampler(corpus, mode="corenet")
    full = take(single, 50)
    state = MixtureSampler(corpus, mode="corenet")
    take(state, 18)
    ranks = []
    for rank in range(2):
        sampler = MixtureSampler(corpus, mode="corenet", rank=rank, world_size=2, batch_size=4)
        sampler.load_state_dict(state.state_dict())
        ranks.append(list(islice(sampler.batches(), 4)))
    index = [i for step in range(4) for rank in range(2) for i in ranks[rank][step]["index"].tolist()]
    inputs = torch.cat([ranks[rank][step]["input_ids"] for step in range(4) for rank in range(2)])
    assert index == list(range(18, 50))
    assert torch.equal(inputs, torch.stack([x["input_ids"] for x in full[18:]]))


def test_batches_are_the_per_sample_stream_stacked(corpus):
    samples = take(MixtureSampler(corpus, mode="corenet"), 12)
    batches = list(islice(MixtureSampler(corpus, mode="corenet").batches(4), 3))
    assert torch.equal(torch.cat([b["input_ids"] for b in batches]), torch.stack([s["input_ids"] for s in samples]))
    assert torch.equal(torch.cat([b["labels"] for b in batches]), torch.stack([s["labels"] for s in samples]))
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(12))


# ---------------------------------------------------------------- live mode

@pytest.fixture(scope="module")
def live_chunks(tokenizer):
    """Real token chunks: this repository's own Python sources, one chunk per 40 lines."""
    texts = {}
    for name, folder in (("code", "corpus"), ("tests", "tests")):
        lines = [line for p in sorted(Path(folder).glob("*.py")) for line in p.read_text().splitlines()]
        pieces = ["\n".join(lines[i:i + 40]) for i in range(0, min(len(lines), 800), 40)]
        texts[name] = [np.asarray(ids, dtype=np.uint16) for ids in tokenizer.encode(pieces, bos=True, eos=True)]
    return texts


def live_streams(chunks: dict, per_unit: int = 3, opened: list | None = None) -> dict:
    """Each source's chunks as a live stream of units of ``per_unit`` chunks; ``opened`` records every (source, pass,
    unit) opened."""
    def stream(name, c):
        units = [c[i:i + per_unit] for i in range(0, len(c), per_unit)]

        def open_units(passes, first):
            if opened is not None:
                opened.append((name, passes, first))
            return iter(units[first:])
        return open_units
    return {name: stream(name, c) for name, c in chunks.items()}


@pytest.mark.parametrize("mode", ["pack", "corenet"])
def test_live_mode_mixes_streamed_chunks_and_resumes_by_skipping_what_was_consumed(live_chunks, mode):
    weights = {"code": 3, "tests": 1}

    def sampler():
        return MixtureSampler(None, sequence_length=64, weights=weights, mode=mode, val_fraction=0,
                              streams=live_streams(live_chunks))
    full = take(sampler(), 80)
    got = [0, 0]
    for s in full:
        got[s["source"]] += served_tokens(s)
        assert abs(got[0] - 0.75 * sum(got)) <= 64
    first = sampler()
    head = take(first, 33)
    second = sampler()
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert same(head + take(second, 47), full)


@pytest.mark.parametrize("mode", ["pack", "corenet"])
def test_a_live_resume_opens_each_source_at_the_unit_it_stopped_in_early_or_late(live_chunks, mode):
    weights = {"code": 3, "tests": 1}

    def sampler(opened=None):
        return MixtureSampler(None, sequence_length=64, weights=weights, mode=mode, val_fraction=0,
                              streams=live_streams(live_chunks, per_unit=2, opened=opened))
    whole = take(sampler(), 150)  # past the end of a pass of each source
    starts = []
    for at in (5, 60, 120):
        first = sampler()
        head = take(first, at)
        state = json.loads(json.dumps(first.state_dict()))
        opened = []
        second = sampler(opened)
        second.load_state_dict(state)
        assert same(head + take(second, 150 - at), whole)
        for name, point in state["streams"].items():
            # the resumed stream starts at the saved unit, never before it: nothing consumed is read again
            (_, passes, unit), *_ = [o for o in opened if o[0] == name]
            assert (passes, unit) == (point["passes"], point["unit"])
        starts.append(state["streams"]["code"]["token"])
    assert starts[0] < starts[1] < starts[2]  # a later resume starts later in the stream (in a later pass too)


@pytest.mark.parametrize("mode", ["pack", "corenet"])
def test_live_ranks_report_the_one_process_state_mid_run_and_serve_on_unchanged(live_chunks, mode):
    def sampler(rank=0, world=1):
        return MixtureSampler(None, sequence_length=64, weights={"code": 3, "tests": 1}, mode=mode, val_fraction=0,
                              rank=rank, world_size=world, batch_size=2,
                              streams=live_streams(live_chunks, per_unit=2))
    alone = sampler()
    single = alone.batches()
    whole = [next(single) for _ in range(40)]
    ranks = [sampler(r, 2) for r in range(2)]
    batches = [r.batches() for r in ranks]
    for step in range(1, 21):
        served = [next(b) for b in batches]
        assert all(torch.equal(served[r]["input_ids"], whole[2 * step - 2 + r]["input_ids"]) for r in range(2))
        if step % 7 == 0:
            # rank 0 stands a block behind the position the state is for, and looks ahead to it
            replayed = sampler()
            ahead = replayed.batches()
            for _ in range(2 * step):
                next(ahead)
            assert ranks[0].state_dict() == ranks[1].state_dict() == replayed.state_dict()


def test_live_pack_windows_follow_the_stream_order_and_repeat_it(live_chunks):
    sampler = MixtureSampler(None, sequence_length=64, weights={"tests": 1}, val_fraction=0,
                             streams=live_streams(live_chunks))
    stream = np.concatenate(live_chunks["tests"])
    n = len(stream) // 64 + 5  # past the end of one pass
    samples = take(sampler, n)
    doubled = np.concatenate([stream, stream])
    assert all(np.array_equal(s["input_ids"].numpy(), doubled[k * 64:k * 64 + 64]) for k, s in enumerate(samples))
    assert sampler.shares()["tests"]["epochs"] == 1


def test_live_validation_split_takes_its_own_chunks(live_chunks):
    def served(split):
        sampler = MixtureSampler(None, sequence_length=4096, weights={"code": 1}, mode="corenet", split=split,
                                 val_fraction=0.2, streams=live_streams(live_chunks))
        return {tuple(s["input_ids"][:12].tolist()) for s in take(sampler, len(live_chunks["code"]))}
    val, train = served("val"), served("train")
    assert val and train and not val & train
    assert len(val | train) == len(live_chunks["code"])


def test_presplit_live_streams_are_served_whole_in_either_split(live_chunks):
    # a pipeline that holds out whole units serves each split its own stream; the sampler must not split it again
    sampler = MixtureSampler(None, sequence_length=4096, weights={"code": 1}, mode="corenet", split="val",
                             val_fraction=0.2, presplit=True, streams=live_streams(live_chunks))
    served = [s["input_ids"][:12].tolist() for s in take(sampler, len(live_chunks["code"]))]
    assert served == [c[:12].tolist() for c in live_chunks["code"]]
    assert sampler.state_dict()["presplit"] is True
