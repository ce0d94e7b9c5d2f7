"""Opening, verifying and decoding images: the pixel bound, damaged files, 16-bit images."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from tests.support import one_colour_png, run_cli
from workers.data.decoded_cache import load_decoded
from workers.data.images import decode_one, verify_images
from workers.data.index import DatasetError


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
