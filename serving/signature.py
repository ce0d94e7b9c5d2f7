"""An input image's signature: a few numbers that describe it without keeping it.

The model server records one per sampled prediction, `automl deploy` computes them on the job's
training images as the reference, and the monitor compares the two distributions (input drift).
Computed on the model's input crop (what the model saw) plus the original size, in numpy: a few
microseconds per image, no model needed.
"""

from __future__ import annotations

import numpy as np

# the names, in a fixed order (the monitor's reference and store use it)
FEATURES = ("width", "height", "brightness", "contrast", "saturation")


def signature(crop: np.ndarray, width: int, height: int) -> dict[str, float]:
    """`crop`: the model's uint8 RGB input, (3, H, W); `width`, `height`: the image as sent.

    brightness: mean luma in [0, 1] (ITU-R BT.601 weights); contrast: the luma's standard
    deviation; saturation: the mean of (max - min) / max over the channels (HSV's S), 0 where
    a pixel is black."""
    rgb = crop.astype(np.float32) / 255.0
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    high, low = rgb.max(axis=0), rgb.min(axis=0)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0)
    return {"width": float(width), "height": float(height), "brightness": float(luma.mean()),
            "contrast": float(luma.std()), "saturation": float(saturation.mean())}
