"""The loaders: training batches in a seeded order with their position as state, and evaluation
shards that count every example once under several processes.

Lightning saves a loader's ``state_dict`` in every checkpoint and restores it on resume, so a
resumed run continues with the very next batch the interrupted run would have seen. The order
is that of torch's shuffling ``DataLoader`` with a generator seeded with ``seed``; with
``lengths`` (``data.group_by_length``) that order is then sorted by length within windows of
``window`` batches, cut into batches, and the batches of each window shuffled again (seeded): each
batch holds examples of similar length, so little of it is padding, and every epoch is still a
fixed function of the seed. Under DDP each step's examples (world x batch size, grouped as one
batch) are shared out among the ranks, which take one consecutive share each.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Optional

import torch
from torch.utils.data import DataLoader


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 outside a distributed run)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The example order of epoch ``epoch``: what a shuffling DataLoader with a generator seeded
    with ``seed`` gives. Per epoch it draws a worker seed and a permutation; its RandomSampler then
    draws one more (empty) permutation once the epoch is exhausted."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epoch):
        torch.empty((), dtype=torch.int64).random_(generator=generator)
        torch.randperm(n, generator=generator)
        torch.randperm(n, generator=generator)
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    return torch.randperm(n, generator=generator).tolist()


def grouped_batches(order: list[int], lengths: list[int], batch_size: int, window: int, seed: int,
                    epoch: int) -> list[list[int]]:
    """``order`` cut into batches of similar lengths: each window of ``window`` batches sorted by
    length (longest first; ties keep the shuffled order), cut, and its batches shuffled with a
    generator seeded by ``seed`` and ``epoch``. Only the last batch of the epoch may be short."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    span = batch_size * window
    batches, short = [], []
    for start in range(0, len(order), span):
        chunk = sorted(order[start:start + span], key=lambda i: -lengths[i])
        cut = [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
        if len(cut[-1]) < batch_size:  # the epoch's remainder: last, as in an unsorted epoch
            short.append(cut.pop())
        batches += [cut[i] for i in torch.randperm(len(cut), generator=generator).tolist()]
    return batches + short


class ResumableLoader:
    def __init__(self, dataset: list[dict[str, Any]], batch_size: int, collate_fn: Callable, seed: int,
                 num_workers: int = 0, lengths: Optional[list[int]] = None, window: int = 64):
        self.dataset, self.batch_size, self.collate_fn = dataset, batch_size, collate_fn
        self.seed, self.num_workers = seed, num_workers
        self.lengths, self.window = lengths, window  # lengths: group batches by length (None: torch's order)
        self.epoch, self.position = 0, 0  # batches of this epoch already given out (on this rank)

    def _batches(self) -> list[list[int]]:
        """This rank's batches: each step's examples over every process (world x batch_size,
        grouped by length as one batch) are cut into consecutive per-rank shares, so that W
        processes of batch B see the very examples one process of batch W x B sees."""
        order = epoch_order(len(self.dataset), self.seed, self.epoch)
        rank, world = rank_and_world()
        size = self.batch_size * world
        if self.lengths is not None:
            steps = grouped_batches(order, self.lengths, size, self.window, self.seed, self.epoch)
        else:
            steps = [order[i:i + size] for i in range(0, len(order), size)]
        return [step[rank * self.batch_size:(rank + 1) * self.batch_size] for step in steps][: len(self)]

    def __len__(self) -> int:
        _, world = rank_and_world()
        n = math.ceil(len(self.dataset) / self.batch_size)
        return n // world if world > 1 else n

    def __iter__(self) -> Iterator[dict[str, Any]]:
        loader = DataLoader(self.dataset, batch_sampler=self._batches()[self.position:], collate_fn=self.collate_fn,
                            num_workers=self.num_workers,
                            generator=torch.Generator().manual_seed(self.seed))  # never the global generator
        for batch in loader:
            self.position += 1
            yield batch
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def eval_shard(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """This process's share of an evaluation split: every world-size-th example, padded to the
    same length on every process with copies marked ``pad`` (evaluation leaves them out), so that
    every process runs the same number of batches and each example is counted exactly once."""
    rank, world = rank_and_world()
    if world == 1:
        return rows
    shard = rows[rank::world]
    return shard + [{**rows[0], "pad": True}] * (math.ceil(len(rows) / world) - len(shard))


class InSplitOrder:
    """Evaluation batches sorted by length (little padding: one batch holds prompts of similar
    length), each carrying the ``position`` in the split (or shard) of its counted examples, so
    that what evaluation returns per example can be put back in the split's order (``restore``)."""

    def __init__(self, rows: list[dict[str, Any]], length: Callable[[dict[str, Any]], int], collate_fn: Callable,
                 sort: bool = True):
        self.rows = [{**row, "position": i} for i, row in enumerate(rows)]
        if sort:  # stable: equal lengths keep the split's order
            self.rows.sort(key=lambda row: -length(row))
        self.collate_fn = collate_fn

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate_fn(examples)
        batch["position"] = [e["position"] for e in examples if not e.get("pad", False)]
        return batch

    @staticmethod
    def restore(pairs: list[tuple[int, Any]]) -> list[Any]:
        """(position, item) pairs in any order -> the items in the split's order."""
        return [item for _, item in sorted(pairs, key=lambda pair: pair[0])]


def unshard(per_rank: list[list[Any]]) -> list[Any]:
    """Back to the split's order: the i-th item of rank r was example i * world + r."""
    world = len(per_rank)
    return [per_rank[r][i] for i in range(max(map(len, per_rank), default=0)) for r in range(world)
            if i < len(per_rank[r])]
