"""`automl train-one`, `predict`, `export`: one trial, and a checkpoint put to use."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from automl.cli.common import err, fail, out, settings_from
from workers.errors import UserError

if TYPE_CHECKING:
    from workers.export import Exported


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` pairs; values are read as YAML scalars (0.1, 1e-4, true, all, [30, 60])."""
    from automl.search.bounded_yaml import load_yaml, yaml_problem

    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {pair[:64]!r}: expected key=value, e.g. --set lr=0.001")
        try:
            values[key.strip()] = load_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError as error:
            raise UserError(f"--set {key.strip()[:64]}=...: the value is "
                            f"{yaml_problem(error)}") from None
    return values


def train_one(
    dataset: Annotated[str, typer.Option(help="ImageFolder dir, CSV manifest or builtin:digits")],
    backbone: Annotated[str, typer.Option(help="any timm model name")] = "resnet10t",
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="trial setting key=value (repeatable)")
    ] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="directory for the checkpoints")] = None,
) -> None:
    """Run one fine-tuning trial and print its final metrics as one JSON line."""
    from workers.config import TrialConfig
    from workers.train.loop import EpochResult, train

    values = {"backbone": backbone, "epochs": epochs, "source": dataset}
    values.update(parse_overrides(set_ or []))
    config = TrialConfig.from_dict(values)
    home = settings_from().home  # AUTOML_HOME, like every other command
    workdir = out_dir or home / "train-one" / time.strftime("%Y%m%d-%H%M%S")
    with _progress() as progress:
        epoch_task = progress.add_task("epochs", total=config.epochs)
        batch_task = progress.add_task("batches", total=None)

        def on_step(step: int, total: int) -> None:
            progress.update(batch_task, completed=step, total=total)

        def on_epoch(result: EpochResult) -> None:
            m = result.metrics
            progress.update(epoch_task, completed=result.epoch)
            progress.console.print(
                f"epoch {result.epoch:>3}  train_loss {m['train_loss']:.4f}  "
                f"val_loss {m['val_loss']:.4f}  val_accuracy {m['val_accuracy']:.4f}  "
                f"lr {m['lr']:.2e}  {m['epoch_seconds']:.1f}s",
                soft_wrap=True,
            )

        summary = train(config, workdir, callback=on_epoch, on_step=on_step)
    final = summary.history[-1]
    line = {
        **final,
        "best_epoch": summary.best_epoch,
        f"best_{config.objective}": summary.best_value,
        "stopped_by": summary.stopped_by,
        "checkpoint": str(summary.best_checkpoint),
    }
    sys.stdout.write(json.dumps(line) + "\n")


def predict(
    images: Annotated[list[Path], typer.Argument(help="image files, or folders of them")],
    checkpoint: Annotated[Path, typer.Option(help="checkpoint directory (automl pull)")],
    top: Annotated[int, typer.Option(min=1, help="also print the top-k classes")] = 1,
    calibrated: Annotated[bool, typer.Option(
        "--calibrated/--uncalibrated", help="probabilities at the temperature the job's "
        "evaluation fitted, where the model has one (labels are the same)")] = True,
) -> None:
    """Print label and probability for each image, one JSON object per line."""
    from workers.data.folders import image_files
    from workers.predict import load_checkpoint, predict_images

    files = image_files(images)  # a folder: every image under it, so no shell glob limit
    predictions = predict_images(load_checkpoint(checkpoint), files, calibrated=calibrated)
    for item in predictions:
        ranked = sorted(item.probabilities.items(), key=lambda kv: -kv[1])[:top]
        row: dict[str, Any] = {
            "image": str(item.path),
            "label": item.label,
            "probability": round(item.probability, 6),
        }
        if top > 1:
            row["top"] = [{"label": k, "probability": round(v, 6)} for k, v in ranked]
        sys.stdout.write(json.dumps(row) + "\n")


def export(
    checkpoint: Annotated[Path, typer.Option(help="checkpoint directory (automl pull)")],
    onnx: Annotated[Path, typer.Option("--out", help="the .onnx file to write")] = Path("model.onnx"),
    opset: Annotated[int | None, typer.Option(help="ONNX opset (default: the exporter's)")] = None,
    int8: Annotated[bool, typer.Option(
        "--int8", help="also write OUT's .int8.onnx: static int8 quantization calibrated on "
        "training images, compared with the float model on the test split")] = False,
    max_drop: Annotated[float, typer.Option(
        help="with --int8: most test accuracy the int8 model may lose (0.01 = one point)")] = 0.01,
    calibration: Annotated[int, typer.Option(
        min=1, help="with --int8: training images to calibrate on")] = 256,
) -> None:
    """Export a checkpoint to ONNX for serving: uint8 images in, probabilities out, checked
    against PyTorch with onnxruntime before the file is written."""
    from workers.export import export_onnx
    from workers.quantize import check_max_drop

    if onnx.is_dir():
        fail(f"--out {onnx} is a directory; give a file name such as {onnx / 'model.onnx'}")
    if int8:
        check_max_drop(max_drop)  # before anything is written
    done = export_onnx(checkpoint, onnx, opset)
    _report_export(done)
    if int8:
        _quantize(checkpoint, done, max_drop, calibration)


def _quantize(checkpoint: Path, done: Exported, max_drop: float, calibration: int) -> None:
    import torch

    from workers.predict import load_checkpoint
    from workers.quantize import quantize_model

    loaded = load_checkpoint(checkpoint, torch.device("cpu"))
    target = done.path.with_name(done.path.stem + ".int8.onnx")
    q = quantize_model(loaded, done.path, target, done.target, calibration, max_drop)
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("model", "test accuracy", f"latency ms ({q.target.key()})", "size MB"):
        table.add_column(name)
    for name, scored in (("fp32", q.fp32), ("int8", q.int8)):
        table.add_row(name, f"{scored.accuracy:.4f}", f"{scored.latency_ms:.3g}",
                      f"{scored.size_bytes / 1e6:.2f}")
    out.print(table)
    summary = (f"int8 {q.speedup:.2f}x the speed of fp32, {100 * q.drop:+.2f} points of accuracy "
               f"lost on {q.test_images} test images (calibrated on {q.calibration_images} "
               "training images)")
    if not q.kept:
        fail(f"{summary}: more than --max-drop {max_drop:g}, so no int8 file was written; keep "
             "the float model, or allow more with --max-drop", code=1)
    out.print(f"wrote {q.path}: {summary}", highlight=False, soft_wrap=True)


def _report_export(done: Exported) -> None:
    size = done.img_size
    out.print(
        f"wrote {done.path} (ONNX opset {done.opset}): input image uint8 [N, 3, {size}, {size}], "
        f"outputs probabilities and logits [N, {len(done.classes)}]; onnxruntime matches PyTorch "
        f"within {done.max_difference:.1e}; classes and preprocessing are in its metadata; "
        f"latency {done.latency_ms:.3g} ms on {done.target.key()} (median of 10 after 3 warm-up)",
        highlight=False, soft_wrap=True,
    )


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )

