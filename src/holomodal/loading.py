"""Data loaders over an encoded split: whole mini-batches gathered by tensor indexing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from holomodal.batch import Batch

if TYPE_CHECKING:
    from lightning.pytorch.utilities import CombinedLoader


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
    ``set_epoch`` before every epoch.

    A loader that cycles within an epoch (the labelled side of semi-supervised batches) asks
    for several passes; each pass is a new permutation, drawn from (seed, epoch, pass)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch, self.passes = n, seed, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.passes = epoch, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch + 7_919 * self.passes)
        self.passes += 1
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


class SequenceDataset(Dataset):
    """Sequences of rows of an encoded split (a patient's studies in time order): an item is
    one sequence, a batch their rows one after the other, with ``extras["sequence"]`` (the
    sequence's number in the batch, -1 for a sequence of one row, which no temporal loss can
    use) and ``extras["position"]`` (the row's place in its sequence)."""

    def __init__(self, split: Batch, sequences: list[list[int]]) -> None:
        self.split, self.sequences = split, sequences

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> Batch:
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]) -> Batch:
        rows, number, position = [], [], []
        multi = 0
        for i in indices:
            seq = self.sequences[i]
            rows.extend(seq)
            number.extend([multi if len(seq) > 1 else -1] * len(seq))
            position.extend(range(len(seq)))
            multi += len(seq) > 1
        batch = self.split.select(rows)
        batch.extras["sequence"] = torch.tensor(number, dtype=torch.long)
        batch.extras["position"] = torch.tensor(position, dtype=torch.long)
        return batch


def sequence_loader(split: Batch, sequences: list[list[int]], batch_size: int, *, shuffle: bool, seed: int = 0,
                    drop_last: bool = False) -> DataLoader:
    """``batch_size`` sequences a batch (see :class:`SequenceDataset`)."""
    return DataLoader(
        SequenceDataset(split, sequences),
        batch_size=batch_size,
        sampler=EpochShuffleSampler(len(sequences), seed) if shuffle else None,
        drop_last=drop_last and len(sequences) > batch_size,
        collate_fn=_batch_as_is,
        num_workers=0,
        pin_memory=torch.cuda.is_available(),
    )


# STiL's batches: one labelled row for every seven unlabelled ones
UNLABELLED_RATIO = 7


def labelled_batch_size(batch_size: int, ratio: int = UNLABELLED_RATIO) -> tuple[int, int]:
    """(labelled, unlabelled) rows of a ``batch_size`` batch at 1 : ``ratio`` (STiL's
    ``l_bs = bs // (1 + ratio)``, the rest unlabelled; at least one of each)."""
    labelled = max(batch_size // (1 + ratio), 1)
    return labelled, max(labelled * ratio, 1)


def repeat_ratio(n_labelled: int, n_unlabelled: int, ratio: int = UNLABELLED_RATIO) -> int:
    """About how often a labelled row is seen per epoch when an epoch is one pass over the
    unlabelled rows (STiL: ``max(N_u // (ratio * N_l) - 1, 1)``)."""
    return max(n_unlabelled // max(ratio * n_labelled, 1) - 1, 1)


def semi_supervised_loader(labelled: Batch, unlabelled: Batch, batch_size: int, *, ratio: int = UNLABELLED_RATIO,
                           seed: int = 0) -> "CombinedLoader":
    """The two-loader training batches every semi-supervised method shares: a dict
    ``{"labelled": Batch, "unlabelled": Batch}`` per step, ``batch_size`` rows in all at
    1 : ``ratio``. Lightning's ``CombinedLoader`` in ``max_size_cycle`` mode makes an epoch
    one pass over the loader with more batches, the unlabelled one whenever there are more
    than ``ratio`` unlabelled rows per labelled row (STiL's setting), and cycles the other,
    each cycle a new shuffle. Under DDP Lightning shards both loaders."""
    from lightning.pytorch.utilities import CombinedLoader

    n_l, n_u = labelled_batch_size(batch_size, ratio)
    loaders = {
        "labelled": make_loader(labelled, n_l, shuffle=True, seed=seed, drop_last=True),
        # another seed: the two sides must not share one permutation of row numbers
        "unlabelled": make_loader(unlabelled, n_u, shuffle=True, seed=seed + 1, drop_last=True),
    }
    return CombinedLoader(loaders, mode="max_size_cycle")
