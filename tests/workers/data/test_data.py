"""Dataset sources, splits, the decoded-image cache, and every data mistake a user can make."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from typer.testing import CliRunner

from automl.cli import app
from tests.support import one_colour_png, write_images
from workers.config import ConfigError, DataConfig, TrialConfig
from workers.data.cache_budget import cache_budget, check_cache_budget, decoded_bytes
from workers.data.decoded_cache import load_decoded, verify_once
from workers.data.images import decode_one, verify_images
from workers.data.index import DatasetError
from workers.data.sources import load_index
from workers.model.backbone import create_backbone
from workers.train.loop import train

runner = CliRunner()


def test_digits_are_a_real_png_imagefolder() -> None:
    index = load_index(DataConfig(source="builtin:digits"))
    assert index.classes == tuple(str(d) for d in range(10))
    assert len(index.paths) == 1797
    assert all(p.suffix == ".png" for p in index.paths[:5])
    sizes = {name: len(idx) for name, idx in index.split_indices.items()}
    assert sum(sizes.values()) == 1797 and sizes["val"] > 200 and sizes["test"] > 200


def test_split_is_stratified_disjoint_and_seeded() -> None:
    a = load_index(DataConfig(source="builtin:digits", split_seed=1))
    b = load_index(DataConfig(source="builtin:digits", split_seed=1))
    c = load_index(DataConfig(source="builtin:digits", split_seed=2))
    assert all(np.array_equal(a.split_indices[s], b.split_indices[s]) for s in a.split_indices)
    assert not np.array_equal(a.split_indices["val"], c.split_indices["val"])
    together = np.concatenate(list(a.split_indices.values()))
    assert len(np.unique(together)) == len(together) == len(a.paths)
    counts = np.bincount(a.split_labels("val"), minlength=10)
    assert counts.min() >= counts.max() - 1  # every class equally represented


def test_user_split_folders_are_used_as_given(tmp_path: Path) -> None:
    for split, n in (("train", 6), ("val", 3), ("test", 2)):
        write_images(tmp_path / split / "cat", n, (200, 0, 0))
        write_images(tmp_path / split / "dog", n, (0, 0, 200))
    index = load_index(DataConfig(source=str(tmp_path)))
    assert index.classes == ("cat", "dog")
    assert {s: len(i) for s, i in index.split_indices.items()} == {"train": 12, "val": 6, "test": 4}
    assert all("/val/" in str(index.paths[i]) for i in index.split_indices["val"])


def test_csv_manifest(tmp_path: Path, color_folder: Path) -> None:
    rows = ["path,label"] + [
        f"{p.relative_to(tmp_path)},{p.parent.name}" for p in sorted(color_folder.rglob("*.png"))
    ]
    manifest = tmp_path / "labels.csv"
    manifest.write_text("\n".join(rows) + "\n")
    index = load_index(DataConfig(source=str(manifest)))
    assert index.classes == ("blue", "red")
    assert len(index.paths) == 24
    # as a spreadsheet saves it: a byte-order mark first, a space after each comma
    manifest.write_text("\ufeff" + "\n".join(r.replace(",", ", ") for r in rows) + "\n")
    assert load_index(DataConfig(source=str(manifest))).classes == ("blue", "red")


def test_bad_manifest_names_the_line(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\na.png,x\nb.png,y\n")
    with pytest.raises(DatasetError, match=r"m.csv:2: the image that line names does not exist"):
        load_index(DataConfig(source=str(manifest)))
    # a file that is no manifest: its content is never quoted back (errors travel over HTTP)
    manifest.write_text("SECRET_API_KEY=hunter2,other\na.png,x\n")
    with pytest.raises(DatasetError, match="'path' and 'label' columns") as caught:
        load_index(DataConfig(source=str(manifest)))
    assert "hunter2" not in str(caught.value) and "SECRET" not in str(caught.value)
    for rows, missing in [("a.png,x\nb.png\n", "label"), ("a.png,x\nb.png,\n", "label"),
                          ("a.png,x\n,y\n", "path")]:
        manifest.write_text("path,label\n" + rows)
        with pytest.raises(DatasetError, match=f"m.csv:3: the row has no {missing}"):
            load_index(DataConfig(source=str(manifest)))


def run_cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["train-one", *args])
    return result.exit_code, result.output


def test_corrupt_image_is_named(color_folder: Path) -> None:
    bad = color_folder / "red" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    code, output = run_cli(
        "--dataset",
        str(color_folder),
        "--backbone",
        "test_resnet",
        "--epochs",
        "1",
        "--set",
        "img_size=32",
    )
    assert code == 2
    assert "cannot decode image" in output and "broken.png" in output
    assert "replace or remove the file" in output


def test_an_image_over_the_pixel_bound_is_refused_from_its_header(color_folder: Path) -> None:
    """8193 x 8192 pixels, one over the bound: the dataset check, the decoded cache a trial
    builds and prediction each refuse it by name, reading its header only (a full decode of
    it takes seconds)."""
    big = color_folder / "red" / "huge.png"
    big.write_bytes(one_colour_png(8193, 8192))
    message = (f"image {big} has 8193x8192 pixels, over the bound of 67,108,864 pixels an "
               "image (AUTOML_MAX_IMAGE_PIXELS; training resizes every image to at most about "
               "1,200 px a side): downscale it, or raise AUTOML_MAX_IMAGE_PIXELS")
    paths = sorted(color_folder.rglob("*.png"))
    for check in (lambda: verify_images(paths), lambda: load_decoded(paths, 32),
                  lambda: decode_one(big, 32)):
        started = time.monotonic()
        with pytest.raises(DatasetError) as refused:
            check()
        assert str(refused.value) == message
        assert time.monotonic() - started < 0.5
    code, output = run_cli("--dataset", str(color_folder), "--backbone", "test_resnet",
                           "--epochs", "1", "--set", "img_size=32")
    assert code == 2 and " ".join(output.split()) == f"error: {message}", output


def test_a_jpeg_over_the_pixel_bound_is_decoded_reduced(tmp_path: Path) -> None:
    """A JPEG decodes at 1/2, 1/4 or 1/8 of its size for little more than that costs: one over
    the bound is read so, its shorter side still above what training resizes it to."""
    from PIL import Image

    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (8200, 8200), (10, 200, 30)).save(photo, quality=90)
    verify_images([photo])
    started = time.monotonic()
    pixels = decode_one(photo, 32)
    assert time.monotonic() - started < 0.5
    assert pixels.shape == (3, 32, 32)
    assert np.abs(pixels[:, 16, 16].astype(int) - [10, 200, 30]).max() <= 3


def test_the_pixel_bound_is_a_setting(color_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = sorted(color_folder.rglob("*.png"))  # 24 x 20 pixels each
    monkeypatch.setenv("AUTOML_MAX_IMAGE_PIXELS", "400")
    with pytest.raises(DatasetError, match=r"has 24x20 pixels, over the bound of 400 pixels an image"):
        verify_images(paths)
    monkeypatch.setenv("AUTOML_MAX_IMAGE_PIXELS", "480")
    verify_images(paths)
    monkeypatch.setenv("AUTOML_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(DatasetError, match=r"^AUTOML_MAX_IMAGE_PIXELS='lots' is not a number of "
                       r"pixels; set it to a whole number such as 67108864, or unset it$"):
        decode_one(paths[0], 32)


def test_empty_class_folder_is_named(color_folder: Path) -> None:
    (color_folder / "green").mkdir()
    code, output = run_cli("--dataset", str(color_folder), "--epochs", "1")
    assert code == 2
    assert "green" in output and "has no images" in output


def test_one_class_dataset_is_refused(color_folder: Path) -> None:
    shutil.rmtree(color_folder / "blue")
    code, output = run_cli("--dataset", str(color_folder), "--epochs", "1")
    assert code == 2
    assert "one class" in output and "at least two" in output


def test_tiny_class_cannot_be_split(color_folder: Path) -> None:
    for extra in list((color_folder / "blue").iterdir())[2:]:
        extra.unlink()
    with pytest.raises(DatasetError, match="class id 0 has 2 image") as caught:
        load_index(DataConfig(source=str(color_folder)))
    assert "blue" not in str(caught.value)  # a class name may be a manifest's content


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backbone", "resnet10"], "close matches: resnet10t"),
        (["--set", "lrr=0.1"], "did you mean lr"),
        (["--set", "optimizer=lamb"], "optimizer='lamb' is not one of adamw, sgd, adam"),
        (["--set", "lr=fast"], "lr='fast' has the wrong type"),
        (["--set", "lr"], "expected key=value"),
        (["--set", "warmup_epochs=20"], "warmup_epochs=20 must be in [0, epochs=10)"),
        (["--set", "val_fraction=0.6", "--set", "test_fraction=0.5"], "leaves no training"),
        (["--set", "freeze_stages=9", "--backbone", "test_resnet"], "use 0..5 or 'all'"),
    ],
)
def test_bad_settings_are_refused_by_name(args: list[str], message: str) -> None:
    code, output = run_cli("--dataset", "builtin:digits", *args)
    assert code == 2
    assert message in " ".join(output.split())


def test_train_one_prints_one_json_line(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "train-one",
            "--dataset",
            "builtin:digits",
            "--backbone",
            "test_resnet",
            "--epochs",
            "1",
            "--set",
            "img_size=32",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code == 0, result.output
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert line["epoch"] == 1 and 0.0 <= line["val_accuracy"] <= 1.0
    assert Path(line["checkpoint"]).joinpath("model.safetensors").is_file()


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


def test_16_bit_images_keep_their_contrast(tmp_path: Path, isolated_cache: Path) -> None:
    """A 16-bit grayscale PNG (medical, satellite data) decodes like its 8-bit twin; PIL's own
    conversion clipped it at 255, turning a dark and a bright image into the same white."""
    from PIL import Image

    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    dark, bright = ramp // 4, 65535 - ramp // 4
    paths = []
    for name, pixels in [("dark", dark), ("bright", bright)]:
        Image.fromarray(pixels).save(tmp_path / f"{name}16.png")  # mode I;16
        Image.fromarray((pixels // 257).astype(np.uint8)).save(tmp_path / f"{name}8.png")
        paths += [tmp_path / f"{name}16.png", tmp_path / f"{name}8.png"]
    dark16, dark8, bright16, bright8 = load_decoded(paths, 32).astype(int)
    assert np.abs(dark16 - dark8).max() <= 1 and np.abs(bright16 - bright8).max() <= 1
    assert dark16.mean() < 40 and bright16.mean() > 215


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_pretrained_weights_are_loaded(tmp_path: Path, suffix: str) -> None:
    """A weights file the test writes itself (1000-class head, as from ImageNet)."""
    torch.manual_seed(123)
    source = timm.create_model("test_resnet", num_classes=1000)
    weights = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        safetensors.torch.save_file(source.state_dict(), str(weights))
    else:
        torch.save(source.state_dict(), weights)
    config = TrialConfig(backbone="test_resnet", pretrained=str(weights))
    model = create_backbone(config, num_classes=10)
    stem = next(iter(source.state_dict()))
    assert torch.equal(model.state_dict()[stem], source.state_dict()[stem])
    assert model.get_classifier().out_features == 10  # new head for our classes
    config = TrialConfig.from_dict(
        {"backbone": "test_resnet", "pretrained": str(weights), "img_size": 32, "epochs": 1}
    )
    assert train(config, tmp_path / "run").epochs_run == 1


def test_missing_weights_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        create_backbone(TrialConfig(pretrained=str(tmp_path / "nope.pth")), 10)


def test_weights_that_do_not_fit_the_backbone_are_a_user_error(tmp_path: Path) -> None:
    """What a user gave (weights of another model) is theirs to fix: one line naming the file
    and the first parameter that differs, not torch's list of every one."""
    state = timm.create_model("test_resnet").state_dict()
    state["conv1.0.weight"] = torch.zeros(3, 3)
    weights = tmp_path / "misfit.safetensors"
    safetensors.torch.save_file(state, str(weights))
    with pytest.raises(ConfigError) as refused:
        create_backbone(TrialConfig(backbone="test_resnet", pretrained=str(weights)), 10)
    assert str(refused.value) == (
        f"pretrained weights {weights} do not fit test_resnet (size mismatch for conv1.0.weight: "
        "copying a param with shape torch.Size([3, 3]) from checkpoint, the shape in current "
        "model is torch.Size([16, 3, 3, 3])); give weights saved from test_resnet")


def test_one_space_spans_vits_and_convnets() -> None:
    """img_size resizes a ViT's position embedding; a DLA without stochastic depth ignores it."""
    vit = create_backbone(TrialConfig(backbone="vit_tiny_patch16_224", img_size=64), 10)
    assert vit.pos_embed.shape[1] == (64 // 16) ** 2 + 1
    assert vit(torch.zeros(1, 3, 64, 64)).shape == (1, 10)
    with pytest.warns(UserWarning, match="dla46x_c has no drop_path_rate"):
        dla = create_backbone(TrialConfig(backbone="dla46x_c", drop_path_rate=0.1), 10)
    assert dla(torch.zeros(1, 3, 64, 64)).shape == (1, 10)


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


def test_a_file_changed_after_verification_is_verified_again(color_folder: Path) -> None:
    paths = sorted(color_folder.rglob("*.png"))
    verify_once(paths)
    verify_once(paths)  # known files: nothing to read
    paths[0].write_bytes(b"\x89PNG\r\n\x1a\nbroken now")
    with pytest.raises(DatasetError, match=f"cannot decode image {paths[0]}"):
        verify_once(paths)


def test_under_the_roots_a_manifest_says_nothing_of_what_lies_outside(
    tmp_path: Path, color_folder: Path
) -> None:
    """Each path a manifest names is judged under the service's dataset roots before it is
    looked at: one answer for a file that exists and one that does not. Without roots (the
    embedded `automl run`) the same manifest reads images anywhere its user can."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "link.png").symlink_to(next(color_folder.rglob("*.png")))
    answers = set()
    manifest = root / "m.csv"
    for named in ("/etc/passwd", "/etc/nope", str(next(color_folder.rglob("*.png"))),
                  "../colors/red/0.png", "link.png"):
        manifest.write_text(f"path,label\n{named},a\n{named},b\n")
        with pytest.raises(DatasetError) as caught:
            load_index(DataConfig(source=str(manifest)), (root,))
        answers.add(str(caught.value))
    assert answers == {f"{manifest}:2: the image that line names resolves outside the dataset "
                       "roots (AUTOML_DATASET_ROOTS); this service reads only under them"}
    rows = [f"{p},{p.parent.name}" for p in sorted(color_folder.rglob("*.png"))]
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n")
    assert len(load_index(DataConfig(source=str(manifest))).paths) == 24
    with pytest.raises(DatasetError, match="resolves outside the dataset roots"):
        load_index(DataConfig(source=str(color_folder)), (root,))


def test_a_label_is_never_quoted(tmp_path: Path, color_folder: Path) -> None:
    """A file read as a manifest may be anything: its labels are its content."""
    image = next(color_folder.rglob("*.png"))
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label\n{image},SECRET_API_KEY=hunter2\n")
    with pytest.raises(DatasetError, match="has one class; a classifier needs") as caught:
        load_index(DataConfig(source=str(manifest)))
    assert "hunter2" not in str(caught.value) and "SECRET" not in str(caught.value)
