"""Warm-start portfolios: configurations a job tries first, for each dataset size (images).

The data is `portfolios.json` beside this file, derived greedily from the 2,443 recorded
fine-tuning runs on 13 datasets of the replay benchmark (`automl-bench portfolio`): each member
lowers most the mean anytime regret over those datasets, given the ones before it, with time
judged relative to the dataset size the portfolio is for. Data, so that the product never imports
the benchmarks that derived it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATA = Path(__file__).with_name("portfolios.json")


def _load() -> dict[int, tuple[dict[str, Any], ...]]:
    raw = json.loads(DATA.read_text())["portfolios"]
    return {int(size): tuple(configs) for size, configs in raw.items()}


PORTFOLIOS: dict[int, tuple[dict[str, Any], ...]] = _load()
