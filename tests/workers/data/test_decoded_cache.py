"""The decoded-image cache: built once, rebuilt when files change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.support import write_images
from workers.data.decoded_cache import load_decoded, verify_once
from workers.data.index import DatasetError


def test_decoded_cache_is_built_once_and_follows_changes(
    color_folder: Path, isolated_cache: Path
) -> None:
    paths = sorted(color_folder.rglob("*.png"))
    first = load_decoded(paths, 24)
    files = sorted((isolated_cache / "decoded").glob("*.npy"))
    second = load_decoded(paths, 24)
    assert sorted((isolated_cache / "decoded").glob("*.npy")) == files
    assert np.array_equal(first, second) and first.shape == (24, 3, 24, 24)
    write_images(color_folder / "red", 13, (0, 255, 0), seed=9)  # rewrites the images
    changed = load_decoded(sorted(color_folder.rglob("*.png")), 24)
    assert not np.array_equal(first, changed)
    assert len(list((isolated_cache / "decoded").glob("*.npy"))) == len(files) + 1


def test_a_file_changed_after_verification_is_verified_again(color_folder: Path) -> None:
    paths = sorted(color_folder.rglob("*.png"))
    verify_once(paths)
    verify_once(paths)  # known files: nothing to read
    paths[0].write_bytes(b"\x89PNG\r\n\x1a\nbroken now")
    with pytest.raises(DatasetError, match=f"cannot decode image {paths[0]}"):
        verify_once(paths)
