"""Infinite shuffled training sampler (detectron2 TrainingSampler, detectron2 ``config/defaults.py``
``DATALOADER.SAMPLER_TRAIN``, ``data/samplers/distributed_sampler.py``), resumable."""
from __future__ import annotations

import itertools
from typing import Iterator

import torch
from torch.utils.data import Sampler


class TrainingSampler(Sampler):
    """Endless stream of ``(index, position)`` pairs over a dataset of ``size`` items.

    The global stream is the concatenation of epochs; epoch e is ``randperm(size)`` drawn from a torch
    generator seeded with ``seed * 1_000_003 + e`` (or ``arange`` without shuffling). Rank r of
    ``world_size`` takes global positions r, r + world_size, ... . ``start`` is the number of items
    this rank already consumed (iteration * per-rank batch size), so a resumed run continues the same
    sequence. State = (seed, position); see ``state_dict``.
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, start: int = 0):
        if size <= 0:
            raise ValueError(f"TrainingSampler needs a non-empty dataset, got size={size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.size = int(size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.start = int(start)

    def _epoch(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def global_stream(self, first: int = 0) -> Iterator[tuple[int, int]]:
        """(index, global position) from global position ``first`` on."""
        epoch, offset = divmod(first, self.size)
        pos = first
        while True:
            perm = self._epoch(epoch)
            for idx in perm[offset:]:
                yield idx, pos
                pos += 1
            epoch, offset = epoch + 1, 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        first = self.start * self.world_size + self.rank
        return itertools.islice(self.global_stream(first), 0, None, self.world_size)

    def state_dict(self, consumed: int) -> dict:
        """State after this rank consumed ``consumed`` items since ``start``."""
        return {"seed": self.seed, "position": self.start + int(consumed)}

    @classmethod
    def from_state(cls, size: int, state: dict, **kwargs) -> "TrainingSampler":
        return cls(size, seed=state["seed"], start=state["position"], **kwargs)


class InferenceSampler(Sampler):
    """Each rank gets a contiguous shard of 0..size-1 (detectron2 InferenceSampler)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        shard = (size - 1) // world_size + 1
        self.indices = list(range(rank * shard, min(size, (rank + 1) * shard)))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
