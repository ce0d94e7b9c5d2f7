"""`builtin:digits`: the bundled dataset as a real PNG ImageFolder."""

from __future__ import annotations

from workers.config import DataConfig
from workers.data.sources import load_index


def test_digits_are_a_real_png_imagefolder() -> None:
    index = load_index(DataConfig(source="builtin:digits"))
    assert index.classes == tuple(str(d) for d in range(10))
    assert len(index.paths) == 1797
    assert all(p.suffix == ".png" for p in index.paths[:5])
    sizes = {name: len(idx) for name, idx in index.split_indices.items()}
    assert sum(sizes.values()) == 1797 and sizes["val"] > 200 and sizes["test"] > 200
