"""What a finished job publishes beside the weights: test metrics, confusion matrix, model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")  # headless: no display on servers
import matplotlib.pyplot as plt
from sklearn.metrics import ConfusionMatrixDisplay

from automl.search.keys import TrialCounts


def write_confusion_png(matrix: list[list[int]], classes: list[str], path: Path) -> Path:
    size = max(4.0, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    display = ConfusionMatrixDisplay(confusion_matrix=np.asarray(matrix), display_labels=classes)
    display.plot(ax=ax, colorbar=False, xticks_rotation=45 if len(classes) > 8 else "horizontal")
    ax.set_title("Test split confusion matrix")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_model_card(
    path: Path,
    *,
    job_id: str,
    trial_number: int,
    config: dict[str, Any],
    classes: list[str],
    val_value: float,
    objective: str,
    test_metrics: dict[str, Any],
    counts: TrialCounts,
) -> Path:
    scalars = {k: v for k, v in test_metrics.items() if isinstance(v, int | float)}
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                     for k, v in sorted(scalars.items()))
    settings = json.dumps(config, indent=2, sort_keys=True)
    path.write_text(
        f"""# Model card: {job_id}, trial {trial_number}

Backbone `{config.get("backbone")}` fine-tuned by automl; best of {counts.complete}
completed trials ({counts.pruned} pruned, {counts.failed} failed).

- Selection: best validation {objective} = {val_value:.4f}
- Classes ({len(classes)}): {", ".join(classes[:50])}{" ..." if len(classes) > 50 else ""}
- Dataset: `{config.get("source")}`, split seed {config.get("split_seed")}

## Test split (evaluated once, after the search)

| metric | value |
| --- | --- |
{rows}

## Trial configuration

```json
{settings}
```

## Use

```
automl pull {job_id} --out model/
automl predict --checkpoint model/ image.jpg
```
"""
    )
    return path
