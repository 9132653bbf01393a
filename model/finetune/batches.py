"""Fine-tuning examples as the trainer's batches: shuffled per epoch, padded per micro-batch, resumable exactly.

The examples are dealt as one stream of micro-batches over successive epochs, each epoch a
seeded permutation of the examples; rank r of W takes micro-batches r, r + W, ..., so any
world size reads the same examples per step. The state a checkpoint keeps is how many
micro-batches the whole run has taken.

Rows are padded on the right to the longest of their micro-batch, one example per row, so no
example attends to another (padding, not packing: OpenELM's attention has no document mask).
Padding and untrained tokens (prompts, user turns) have the target IGNORE_INDEX.

For preference pairs a micro-batch of n pairs is 2n rows, the chosen completions then the
rejected ones, and carries the reference log-probabilities of its rows when the objective has
a reference (`model.finetune.objectives`).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from model.train.data import IGNORE_INDEX, Batch


def sft_rows(examples) -> tuple[list[list[int]], list[list[bool]]]:
    return [e.input_ids for e in examples], [e.trained for e in examples]


def preference_rows(examples) -> tuple[list[list[int]], list[list[bool]]]:
    """Chosen rows, then rejected rows: each the prompt and its completion, the completion trained."""
    ids, trained = [], []
    for side in ("chosen", "rejected"):
        for e in examples:
            completion = getattr(e, side)
            ids.append(list(e.prompt) + list(completion))
            trained.append([False] * len(e.prompt) + [True] * len(completion))
    return ids, trained


def pad_batch(ids: list[list[int]], trained: list[list[bool]], pad_id: int) -> tuple[Tensor, Tensor]:
    """(inputs, targets) of right-padded rows: the target of position t is token t + 1 when that token is trained."""
    width = max(len(x) for x in ids)
    tokens = torch.full((len(ids), width), pad_id, dtype=torch.long)
    keep = torch.zeros((len(ids), width), dtype=torch.bool)
    for row, (x, t) in enumerate(zip(ids, trained)):
        tokens[row, :len(x)] = torch.tensor(x, dtype=torch.long)
        keep[row, :len(t)] = torch.tensor(t, dtype=torch.bool)
    targets = tokens[:, 1:].masked_fill(~keep[:, 1:], IGNORE_INDEX)
    return tokens[:, :-1].contiguous(), targets.contiguous()


@dataclass
class ExampleBatches:
    """Examples of a record kind (`sft` or `preference`) turned into batches, with the reference log-probabilities
    of preference examples ((examples, 2): chosen, rejected) once they are known and when the objective has one."""
    examples: list
    records: str
    pad_id: int
    reference: Tensor | None = None

    def batch(self, indices: list[int], device) -> Batch:
        picked = [self.examples[i] for i in indices]
        ids, trained = (preference_rows if self.records == "preference" else sft_rows)(picked)
        inputs, targets = pad_batch(ids, trained, self.pad_id)
        if self.reference is None:
            return inputs.to(device), targets.to(device)
        ref = self.reference[indices]
        return inputs.to(device), targets.to(device), torch.cat([ref[:, 0], ref[:, 1]]).to(device)

    def in_order(self, micro_batch_size: int, device, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """Every example once, in order, in micro-batches, each padded when it is reached; this rank's share
        (batches rank, rank + W, ...). A pass over a large set (the reference log-probabilities) holds one batch."""
        starts = range(0, len(self.examples), micro_batch_size)
        for j, s in enumerate(starts):
            if j % world_size == rank:
                yield self.batch(list(range(s, min(s + micro_batch_size, len(self.examples)))), device)


@dataclass
class ShuffledBatches:
    """The trainer's `BatchSource` over examples: epochs of seeded permutations, dealt in micro-batches to ranks."""
    source: ExampleBatches
    micro_batch_size: int
    seed: int
    rank: int
    world_size: int
    device: object
    taken: int = 0                     # micro-batches the whole run has taken (all ranks)
    _epoch: int = field(default=-1, repr=False)
    _order: list[int] = field(default_factory=list, repr=False)

    def _position(self, p: int) -> int:
        n = len(self.source.examples)
        epoch, i = divmod(p, n)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order, self._epoch = torch.randperm(n, generator=generator).tolist(), epoch
        return self._order[i]

    def next(self) -> Batch:
        first = (self.taken + self.rank) * self.micro_batch_size
        indices = [self._position(p) for p in range(first, first + self.micro_batch_size)]
        self.taken += self.world_size
        return self.source.batch(indices, self.device)

    def state_dict(self) -> dict:
        return {"micro_batches_taken": self.taken, "examples": len(self.source.examples)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("examples") != len(self.source.examples):
            raise ValueError(f"the checkpoint was taken over {state.get('examples')} training examples, the data now "
                             f"gives {len(self.source.examples)}; resume with the same --data")
        self.taken = int(state["micro_batches_taken"])
