"""One trial over several processes (DDP): which rank this is, which images each rank trains and
validates on, and the sums all ranks agree on.

The trial engine stays the same code for one process and for a group: with no process group
initialized (`torch.distributed`), everything here is the identity and the loop runs exactly as
it always did. Whoever starts the processes (Ray Train in `workers.tune_adapter`, the tests'
`torch.multiprocessing`) initializes the group; nothing here imports Ray.

Global batch: each step trains on one batch of `batch_size` images drawn from one permutation of
the training split that every rank computes alike (the same seed), split into `world` contiguous
shares of as equal size as may be. Where `batch_size` does not divide by `world` the shares
differ by one image, and each rank weighs its mean loss by its share of the batch
(`loss_weight`), so that DDP's average of the ranks' gradients is the gradient of the whole
batch's mean loss, as one process would compute it. (Gradient accumulation would not help
there: it splits a batch in time, and a batch that does not divide by the ranks does not divide
by ranks times steps either.) The learning-rate schedule, being per epoch, is untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class Group:
    """This process's place in its trial's process group (rank 0 of 1 when there is none)."""

    rank: int = 0
    world: int = 1

    @property
    def leader(self) -> bool:
        """Rank 0: the one that writes checkpoints."""
        return self.rank == 0

    @classmethod
    def current(cls) -> Group:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()


def shares(batch_size: int, world: int, *, pairs: bool = False) -> list[int]:
    """How many images of one global batch each rank trains on: as equal as may be, and in
    pairs when mixup/cutmix is on (it mixes each image with another of the same rank's batch)."""
    unit = 2 if pairs else 1
    units, extra = divmod(batch_size // unit, world)
    counts = [(units + (rank < extra)) * unit for rank in range(world)]
    counts[-1] += batch_size - sum(counts)  # an odd batch with pairs: refused before this
    return counts


def check_batch(batch_size: int, world: int, *, pairs: bool = False) -> str | None:
    """Why a global batch cannot be split over `world` ranks (each needs an image, a pair with
    mixup), or None."""
    smallest = min(shares(batch_size, world, pairs=pairs))
    if smallest < (2 if pairs else 1):
        need = world * (2 if pairs else 1)
        return (f"batch_size={batch_size} is too small for {world} workers: each needs "
                f"{'a pair of images (mixup/cutmix)' if pairs else 'an image'} per step, so at "
                f"least {need}")
    return None


def loss_weight(batch_size: int, world: int, share: int) -> float:
    """The factor on a rank's mean loss that makes DDP's mean of gradients the whole batch's."""
    return share * world / batch_size


class RankBatches(Sampler[list[int]]):
    """This rank's share of every global batch of one epoch (a batch sampler for DataLoader).

    Every rank draws the same permutation of the split from the epoch's seed, cuts it into
    global batches of `batch_size` (the last, short one dropped, as one process drops it when
    the split holds more than one batch), and takes its own share of each.
    """

    def __init__(self, n: int, batch_size: int, group: Group, seed: int, *,
                 pairs: bool = False) -> None:
        self.n, self.batch_size, self.group, self.seed = n, batch_size, group, seed
        counts = shares(batch_size, group.world, pairs=pairs)
        self.start = sum(counts[: group.rank])
        self.share = counts[group.rank]
        self.drop_last = n > batch_size

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else 1

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(self.n, generator=generator).tolist()
        for first in range(0, len(self) * self.batch_size, self.batch_size):
            batch = order[first: first + self.batch_size]
            yield batch[self.start: self.start + self.share]


def shard(n: int, group: Group) -> list[int]:
    """This rank's part of an evaluation split: every `world`-th image, none twice, none left
    out (shards may differ by one; the metrics are summed over all of them, not padded)."""
    return list(range(group.rank, n, group.world))


def all_sum(value: torch.Tensor | float, device: torch.device) -> float:
    """A number summed over the group's ranks (itself without a group)."""
    tensor = torch.as_tensor(value, dtype=torch.float64, device=device).clone()
    if Group.current().world > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is true on one (a stop one rank's callback asked for)."""
    return all_sum(1.0 if flag else 0.0, device) > 0
