"""The input-signature half of deploy's monitoring reference, on datasets alone (no job)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from automl.jobs.deploy import _decile_bins, check_name, index_signature
from serving.signature import FEATURES, signature
from workers.config import DataConfig
from workers.data.sources import load_index

PREP: dict[str, Any] = {"img_size": 16, "resize": 18, "interpolation": "bicubic"}


def _images(seed: int = 0) -> list[tuple[str, Image.Image]]:
    """Two classes of noisy images in a few sizes and brightnesses."""
    rng = np.random.default_rng(seed)
    found = []
    for i in range(40):
        label = ("dark", "light")[i % 2]
        base = 40 if label == "dark" else 200
        width, height = 20 + 4 * (i % 5), 24 + 2 * (i % 3)
        pixels = np.clip(base + rng.integers(-30, 30, (height, width, 3)), 0, 255)
        found.append((label, Image.fromarray(pixels.astype(np.uint8))))
    return found


def test_deciles_have_open_ended_bins_and_merge_repeated_cut_points() -> None:
    values = np.arange(1, 101, dtype=float)
    bins = _decile_bins(values)
    assert len(bins["edges"]) == 9 and len(bins["train"]) == 10
    assert bins["train"] == pytest.approx([0.1] * 10)
    assert _decile_bins(np.full(50, 7.0)) == {"edges": [7.0], "train": [1.0, 0.0]}
    # the rule a reader applies: bin i is (edges[i-1], edges[i]]
    assert int(np.searchsorted(bins["edges"], bins["edges"][0], side="left")) == 0


def test_signatures_of_a_folder_and_a_parquet_table_are_what_the_server_sees(
        tmp_path: Path) -> None:
    images = _images()
    folder = tmp_path / "folder"
    for i, (label, image) in enumerate(images):
        (folder / label).mkdir(parents=True, exist_ok=True)
        image.save(folder / label / f"{i:03d}.png")
    rows = []
    for i, (label, image) in enumerate(images):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        rows.append({"image": {"bytes": buffer.getvalue(), "path": f"{i:03d}.png"},
                     "label": label})
    table = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist(rows), table, row_group_size=7)

    from_folder = index_signature(load_index(DataConfig(source=str(folder))), PREP)
    index = load_index(DataConfig(source=str(table)))
    from_table = index_signature(index, PREP)
    assert set(from_folder) == set(FEATURES)
    # the splits differ (the folder's files sort by class), so compare what both must hold
    for reference in (from_folder, from_table):
        assert reference["width"]["edges"] == sorted(reference["width"]["edges"])
        assert all(sum(f["train"]) == pytest.approx(1) for f in reference.values())
        assert set(reference["width"]["edges"]) <= {20.0, 24.0, 28.0, 32.0, 36.0}
    # and on the table, each sampled image is what the server sees: the same numbers by hand
    train = [int(r) for r in index.split_indices["train"]]
    crops = []
    for row in train:
        _, image = images[row]
        side = int(PREP["resize"])
        scale = side / min(image.size)
        w, h = max(side, round(image.width * scale)), max(side, round(image.height * scale))
        resized = image.resize((w, h), Image.Resampling.BICUBIC)
        left, top = (w - side) // 2, (h - side) // 2
        pixels = np.asarray(resized.crop((left, top, left + side, top + side))).transpose(2, 0, 1)
        crop = pixels[:, 1:17, 1:17]
        crops.append(signature(crop, image.width, image.height))
    brightness = np.array([c["brightness"] for c in crops])
    assert from_table["brightness"] == _decile_bins(brightness)


def test_a_sample_is_seeded_and_bounded(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    for i, (label, image) in enumerate(_images()):
        (folder / label).mkdir(parents=True, exist_ok=True)
        image.save(folder / label / f"{i:03d}.png")
    index = load_index(DataConfig(source=str(folder)))
    assert index_signature(index, PREP, limit=10) == index_signature(index, PREP, limit=10)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "-x", "a b", "x" * 129, "é"])
def test_a_model_name_is_one_safe_folder_name(name: str) -> None:
    from automl.jobs.deploy import DeployError

    with pytest.raises(DeployError, match="not a model name"):
        check_name(name)
    assert check_name("digits-23f801.v2_a") == "digits-23f801.v2_a"
