"""The decoded cache's disk budget, known before anything is decoded."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.data.cache_budget import cache_budget, check_cache_budget, decoded_bytes
from workers.data.decoded_cache import load_decoded
from workers.data.index import DatasetError


def test_the_cache_size_is_known_before_decoding(color_folder: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """What a job's preflight is told it needs is what the cache then writes, to the byte."""
    monkeypatch.setenv("AUTOML_CACHE_DIR", str(tmp_path / "cache"))
    paths = sorted(color_folder.rglob("*.png"))
    load_decoded(paths, 24)
    written = next((tmp_path / "cache" / "decoded").glob("*.npy")).stat().st_size
    assert written == decoded_bytes(len(paths), 24)
    assert decoded_bytes(100_000, [256, 248]) == 100_000 * 3 * (256**2 + 248**2) + 2 * 128


def test_a_dataset_over_the_cache_budget_is_refused_before_a_byte_is_written(
    color_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("AUTOML_CACHE_DIR", str(cache))
    monkeypatch.setenv("AUTOML_CACHE_MAX_GB", "0.00004")  # 40 KB; 24 images at 24 px are 41 KB
    paths = sorted(color_folder.rglob("*.png"))
    with pytest.raises(DatasetError) as caught:
        load_decoded(paths, 24)
    message = str(caught.value)
    assert "needs 41.6 KB for 24 images at 24x24 px" in message
    assert "budget of 40.0 KB (AUTOML_CACHE_MAX_GB=0.00004" in message
    for fix in ("raise AUTOML_CACHE_MAX_GB", "free disk", "AUTOML_CACHE_DIR", "smaller img_size"):
        assert fix in message
    assert not [p for p in cache.rglob("*") if p.is_file() and p.stat().st_size > 0]
    with pytest.raises(DatasetError, match="for 1,000,000 images at 256x256 px"):
        check_cache_budget(1_000_000, 256, cache)  # what a driver's preflight calls


def test_the_budget_counts_what_other_datasets_already_hold(
    color_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOML_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AUTOML_CACHE_MAX_GB", "0.00005")  # room for one 41 KB dataset, not two
    load_decoded(sorted((color_folder / "red").glob("*.png")) * 2, 24)
    with pytest.raises(DatasetError, match=r"less 4\d\.\d KB other cached datasets hold\)"):
        load_decoded(sorted((color_folder / "blue").glob("*.png")) * 2, 24)
    monkeypatch.setenv("AUTOML_CACHE_MAX_GB", "lots")
    with pytest.raises(DatasetError, match="AUTOML_CACHE_MAX_GB='lots' is not a size in GB"):
        check_cache_budget(1, 24)


def test_without_a_budget_the_free_disk_less_a_margin_is_the_limit(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTOML_CACHE_MAX_GB", raising=False)
    budget = cache_budget(tmp_path / "not-yet-created")
    assert "free disk under AUTOML_CACHE_DIR" in budget.reason
    assert "safety margin" in budget.reason and str(tmp_path) not in budget.reason
    with pytest.raises(DatasetError, match="free disk under AUTOML_CACHE_DIR") as refused:
        check_cache_budget(10**9, 1024, tmp_path)  # 3 PB
    assert str(tmp_path) not in str(refused.value)  # the server's folders are its operator's
