"""What a finished job publishes beside the weights: test metrics, confusion matrix, model card,
and the evaluation of the model on the test split (`automl evaluate`'s report)."""

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
from workers.evaluate.html import CHART_FILES, write_html


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


def model_card_body(
    *,
    job_id: str,
    trial_number: int,
    config: dict[str, Any],
    dataset: str,
    classes: list[str],
    val_value: float,
    objective: str,
    test_metrics: dict[str, Any],
    counts: TrialCounts,
    costs: dict[str, float] | None = None,
    evaluation: dict[str, Any] | None = None,
) -> str:
    """The card's text (also the study's note in optuna-dashboard). The dataset is named by
    `dataset` (`automl.search.dataset_name`), not by the trial's source path."""
    scalars = {k: v for k, v in test_metrics.items() if isinstance(v, int | float)}
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                     for k, v in sorted(scalars.items()))
    cost_rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in sorted((costs or {}).items()))
    cost_section = (f"\n## Costs (measured before it trained)\n\n| cost | value |\n| --- | --- |\n"
                    f"{cost_rows}\n") if costs else ""
    settings = json.dumps({k: v for k, v in config.items() if k != "source"}, indent=2,
                          sort_keys=True)
    return f"""# Model card: {job_id}, trial {trial_number}

Backbone `{config.get("backbone")}` fine-tuned by automl; best of {counts.complete}
completed trials ({counts.pruned} pruned, {counts.failed} failed).

- Selection: best validation {objective} = {val_value:.4f}
- Classes ({len(classes)}): {", ".join(classes[:50])}{" ..." if len(classes) > 50 else ""}
- Dataset: {dataset}, split seed {config.get("split_seed")}

## Test split (evaluated once, after the search)

| metric | value |
| --- | --- |
{rows}
{cost_section}{evaluation_section(evaluation)}
## Trial configuration

```json
{settings}
```

## Use

```
automl pull {job_id} --out model/
automl predict --checkpoint model/ image.jpg
```

or with timm alone:

```python
import timm
model = timm.create_model("local-dir:model/", pretrained=True).eval()
transform = timm.data.create_transform(**timm.data.resolve_data_config({{}}, model=model))
```
"""


# what a publication carries of its evaluation
EVALUATION_FILES = ("evaluation.json", "evaluation.html", *CHART_FILES.values())


def write_evaluation(evaluation: dict[str, Any], folder: Path) -> None:
    """The published model's evaluation (`automl evaluate` on the test split) beside it: the
    report as JSON, its HTML page, and its calibration and robustness charts as PNGs."""
    (folder / EVALUATION_FILES[0]).write_text(json.dumps(evaluation))
    write_html(evaluation, folder / EVALUATION_FILES[1], charts=folder)


def evaluation_section(evaluation: dict[str, Any] | None) -> str:
    """The card's summary of the evaluation: calibration, robustness, the weakest classes."""
    if evaluation is None:
        return ""
    cal = evaluation["calibration"]
    lines = [f"- Calibration: expected calibration error {cal['ece']:.4f} as trained"]
    if cal["temperature"] is not None:
        lines[0] += (f", {cal['ece_calibrated']:.4f} at temperature {cal['temperature']:.3f} "
                     f"(fitted on {cal['fitted_on']}); `automl predict` reports probabilities "
                     "at that temperature")
    rob = evaluation["robustness"]
    if rob is not None:
        worst = ", ".join(f"{name} {rob['relative_drop'][name]:.1%}" for name in rob["worst"][:3])
        lines.append(f"- Robustness: accuracy drops by {rob['mean_relative_drop']:.1%} on average "
                     f"under {len(rob['relative_drop'])} corruptions x {len(rob['severities'])} "
                     f"severities (relative to clean); worst: {worst}")
    scored = [row for row in evaluation["per_class"] if row["support"] and row["f1"] is not None]
    weakest = sorted(scored, key=lambda row: row["f1"])[:3]
    if weakest:
        lines.append("- Weakest classes (F1): " + ", ".join(
            f"{row['class']} {row['f1']:.3f}" for row in weakest))
    return ("\n## Evaluation (test split; the whole report: evaluation.html)\n\n"
            + "\n".join(lines) + "\n")


def write_hub_card(path: Path, body: str, *, job_id: str, config: dict[str, Any],
                   dataset: str, test_metrics: dict[str, Any]) -> Path:
    """README.md as the Hugging Face Hub reads a model card: YAML front matter (timm, tags,
    the test scores as model-index results), then the card's text."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    results = [EvalResult(task_type="image-classification", dataset_type="imagefolder",
                          dataset_name=dataset, dataset_split="test",
                          metric_type=name.removeprefix("test_"), metric_value=float(value))
               for name, value in sorted(test_metrics.items())
               if name.startswith("test_") and name != "test_images" and isinstance(value, int | float)]
    backbone = str(config.get("backbone", ""))
    data = ModelCardData(
        library_name="timm", pipeline_tag="image-classification", model_name=job_id,
        tags=["image-classification", "timm", "automl", backbone.split(".")[0]],
        base_model=f"timm/{backbone}" if config.get("pretrained") is True else None,
        eval_results=results or None,
    )
    card = ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n" + body)
    path.write_text(str(card))
    return path
