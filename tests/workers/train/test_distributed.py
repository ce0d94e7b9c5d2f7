"""A trial over two processes (real gloo, torch.multiprocessing, no Ray) is the same trial: the
global batch split, validation over every image once, checkpoints from rank 0 only, and a
checkpoint any number of ranks resumes."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from workers.config import TrialConfig
from workers.data.sources import load_index
from workers.train.distributed import Group, RankBatches, check_batch, loss_weight, shard, shares
from workers.train.loop import EpochResult, train

TINY = {"backbone": "test_resnet", "img_size": 32, "batch_size": 64, "lr": 3e-3,
        "augment": "none", "epochs": 3}


def test_shares_split_a_global_batch_exactly() -> None:
    assert shares(64, 2) == [32, 32]
    assert shares(30, 4) == [8, 8, 7, 7]
    assert shares(30, 4, pairs=True) == [8, 8, 8, 6]
    assert all(sum(shares(b, w)) == b for b in range(1, 70) for w in (1, 2, 3, 5))
    # the weighted ranks' mean is the batch mean
    counts = shares(30, 4)
    assert sum(loss_weight(30, 4, c) for c in counts) / 4 == pytest.approx(1.0)
    assert check_batch(3, 4) is not None and check_batch(4, 4) is None
    assert check_batch(6, 4, pairs=True) is not None


def test_rank_batches_cover_each_global_batch_once() -> None:
    n, batch = 101, 30
    ranks = [list(RankBatches(n, batch, Group(r, 3), seed=5)) for r in range(3)]
    assert all(len(batches) == n // batch for batches in ranks)
    for step in range(n // batch):
        together = [i for r in range(3) for i in ranks[r][step]]
        assert len(together) == batch == len(set(together))
    seen = [i for r in range(3) for b in ranks[r] for i in b]
    assert len(seen) == len(set(seen)) == (n // batch) * batch
    assert sorted(i for r in range(3) for i in shard(11, Group(r, 3))) == list(range(11))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank(rank: int, world: int, port: int, config: dict[str, Any], out: str,
          resume: str | None) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        seen: list[dict[str, Any]] = []

        def keep(result: EpochResult) -> None:
            seen.append({"epoch": result.epoch, "val_accuracy": result.metrics["val_accuracy"],
                         "matrix": result.metrics["val_confusion_matrix"],
                         "checkpoint": str(result.checkpoint) if result.checkpoint else None,
                         "images_per_second": result.metrics["train_images_per_second"]})

        workdir = Path(out) / f"rank{rank}"
        train(TrialConfig.from_dict(config), workdir, callback=keep, keep_best=False,
              resume=Path(resume) if resume else None)
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(seen))
    finally:
        dist.destroy_process_group()


def _group(config: dict[str, Any], out: Path, world: int = 2,
           resume: Path | None = None) -> list[list[dict[str, Any]]]:
    mp.spawn(_rank, args=(world, _free_port(), config, str(out), str(resume) if resume else None),
             nprocs=world, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def test_two_ranks_learn_as_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    """Same global batch (64), same epochs: the 2-rank trial ends within noise of the 1-process
    one (the ranks' BatchNorm statistics are per rank, as in any DDP run without SyncBatchNorm);
    both ranks see the same, all-reduced metrics, over every validation image once; only rank
    0 writes a checkpoint."""
    torch.set_num_threads(1)
    one: list[EpochResult] = []
    train(TrialConfig.from_dict(TINY), tmp_path / "one", callback=one.append, keep_best=False)
    ranks = _group(TINY, tmp_path / "two")
    assert [r["epoch"] for r in ranks[0]] == [1, 2, 3]
    assert ranks[0][-1]["val_accuracy"] == ranks[1][-1]["val_accuracy"]
    val_images = len(load_index(TrialConfig.from_dict(TINY).data).split_indices["val"])
    assert sum(map(sum, ranks[0][-1]["matrix"])) == val_images
    assert ranks[0][-1]["checkpoint"] and ranks[1][-1]["checkpoint"] is None
    assert not (tmp_path / "two" / "rank1" / "latest").exists()
    single = one[-1].metrics["val_accuracy"]
    assert single >= 0.85 and ranks[0][-1]["val_accuracy"] >= 0.85
    assert abs(ranks[0][-1]["val_accuracy"] - single) <= 0.05, (ranks[0][-1], single)

    # a checkpoint two ranks wrote resumes in one process, at the next epoch
    resumed: list[EpochResult] = []
    train(TrialConfig.from_dict({**TINY, "epochs": 4}), tmp_path / "again",
          callback=resumed.append, keep_best=False, resume=Path(ranks[0][-1]["checkpoint"]))
    assert [r.epoch for r in resumed] == [4]
    assert resumed[0].metrics["val_accuracy"] >= 0.85
