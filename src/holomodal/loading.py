"""Data loaders over an encoded split: whole mini-batches gathered by tensor indexing."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from holomodal.batch import Batch


def _batch_as_is(batch: Batch) -> Batch:
    return batch


class BatchDataset(Dataset):
    """An encoded split; ``__getitems__`` lets the DataLoader fetch a whole batch at once."""

    def __init__(self, split: Batch) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> Batch:
        return self.split.select([index])

    def __getitems__(self, indices: list[int]) -> Batch:
        return self.split.select(indices)


class EpochShuffleSampler(Sampler[int]):
    """A permutation drawn from ``(seed, epoch)`` alone, so an epoch re-run after resuming
    from a checkpoint sees the same order as in an uninterrupted run. Lightning calls
    ``set_epoch`` before every epoch."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())


def make_loader(split: Batch, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False) -> DataLoader:
    return DataLoader(
        BatchDataset(split),
        batch_size=batch_size,
        sampler=EpochShuffleSampler(len(split), seed) if shuffle else None,
        drop_last=drop_last and len(split) > batch_size,
        collate_fn=_batch_as_is,
        num_workers=0,  # the split is already in memory as tensors: workers would only copy it
        pin_memory=torch.cuda.is_available(),
    )
