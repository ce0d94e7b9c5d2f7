"""Where a model looked for one class: a heatmap over each eval crop, in [0, 1].

Grad-CAM (Selvaraju et al. 2017) of the class on the model's final feature map, by captum's
`LayerGradCam`: the map's channels weighted by the class score's mean gradient over the map,
summed, ReLU'd, upsampled (bilinear) to the crop and scaled to [0, 1] per image.

Every timm model splits at `forward_features` / `forward_head`, and the feature map is read
between the two:

- CNN: NCHW (NHWC where the model's `output_fmt` says so).
- ViT-like: tokens (N, T, C); the `num_prefix_tokens` (class, register tokens) are dropped and the
  rest reshaped to `patch_embed.grid_size`. Where the head reads only the class token
  (`global_pool == "token"`) the final patch tokens get no gradient at all, so the tokens
  entering the last block are read instead (the usual Grad-CAM recipe for a ViT).

Where no map can be read (any other shape) or the map is one cell (a stride-32 CNN on 32-px
images: Grad-CAM would be one flat value), the fallback is captum's gradient saliency,
|d score / d pixel| with the max over channels (Simonyan et al. 2014). `method` names which.

The model stays in eval() (frozen BatchNorm statistics, no dropout); gradients are switched
on here whatever the caller's mode (the predictions run under inference_mode).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam, Saliency
from torch import nn

GRAD_CAM = "grad-cam"
SALIENCY = "gradient saliency"

# the tensor between the two halves of a model -> NCHW, and NCHW -> that tensor again
Reshape = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor, torch.Tensor],
                                                                   torch.Tensor]]


@dataclass(frozen=True)
class Attribution:
    method: str  # "grad-cam (...)" or "gradient saliency (why)"
    heatmaps: np.ndarray  # (N, H, W) float32 in [0, 1], H x W the crops'


def attribute(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> Attribution:
    """Heatmaps of `targets` (class ids, (N,)) over `images` (normalized float NCHW, on the
    model's device)."""
    model.eval()
    with torch.inference_mode(False), torch.enable_grad():
        images = images.detach().clone().float().requires_grad_()  # autograd takes this one
        targets = targets.detach().clone()
        with torch.no_grad():
            features = model.forward_features(images)  # type: ignore[operator]
        layer, reshape, where = _feature_map(model, features)
        if reshape is None:
            return _saliency(model, images, targets, where)
        grid = reshape[0](features)
        if grid.shape[2] * grid.shape[3] == 1:
            return _saliency(model, images, targets, f"{where} is 1x1: one flat value")
        probe = _Grid()
        restore = _insert(model, layer, probe, reshape)
        try:
            cam = LayerGradCam(_Forward(model), probe).attribute(
                images, target=targets, relu_attributions=True)
        finally:
            restore()
        heat = LayerAttribution.interpolate(cam.detach().float(), tuple(images.shape[2:]),
                                            "bilinear")
        size = f"{grid.shape[2]}x{grid.shape[3]}"
        return Attribution(f"{GRAD_CAM} ({where}, {size})", _unit(heat[:, 0]))


class _Grid(nn.Module):
    """The identity: the layer whose output (the NCHW feature map) Grad-CAM reads."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _Forward(nn.Module):
    """The model, called as captum calls it (its own forward, with the probe inserted)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x))  # type: ignore[operator]


def _feature_map(model: nn.Module, features: torch.Tensor) -> tuple[str, Reshape | None, str]:
    """Where the map is read ("features": forward_features' output, "last block": the input of
    model.blocks[-1]), how it becomes NCHW, and a few words naming it."""
    if features.dim() == 4:
        if getattr(model, "output_fmt", "NCHW") == "NHWC":
            return "features", (lambda x: x.permute(0, 3, 1, 2),
                                lambda _, g: g.permute(0, 2, 3, 1)), "final feature map"
        return "features", (lambda x: x, lambda _, g: g), "final feature map"
    grid_size = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if features.dim() != 3 or grid_size is None:
        return "features", None, f"no feature map in a {tuple(features.shape)} output"
    h, w = int(grid_size[0]), int(grid_size[1])
    prefix = int(getattr(model, "num_prefix_tokens",
                         1 if getattr(model, "cls_token", None) is not None else 0))
    if features.shape[1] != prefix + h * w:
        return "features", None, f"{features.shape[1]} tokens are not {prefix} + {h}x{w}"

    def to_grid(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, prefix:]
        return patches.transpose(1, 2).reshape(len(tokens), -1, h, w)

    def to_tokens(tokens: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return torch.cat([tokens[:, :prefix], grid.flatten(2).transpose(1, 2)], dim=1)

    blocks = getattr(model, "blocks", None)
    if getattr(model, "global_pool", None) == "token":  # the head reads the class token only
        if isinstance(blocks, nn.Sequential | nn.ModuleList) and len(blocks):
            return "last block", (to_grid, to_tokens), "patch tokens entering the last block"
        return "features", None, "the head reads only the class token"
    return "features", (to_grid, to_tokens), "final patch tokens"


def _insert(model: nn.Module, layer: str, probe: _Grid, reshape: Reshape) -> Callable[[], None]:
    """Route the map through `probe` (as NCHW) during the model's forward; returns the undo."""
    to_grid, back = reshape
    if layer == "last block":
        def pre_hook(_: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            return (back(args[0], probe(to_grid(args[0]))), *args[1:])

        last = list(model.get_submodule("blocks").children())[-1]
        handle = last.register_forward_pre_hook(pre_hook)
        return handle.remove

    original = model.forward_features

    def forward_features(x: torch.Tensor) -> torch.Tensor:
        features = original(x)  # type: ignore[operator]
        return back(features, probe(to_grid(features)))

    model.forward_features = forward_features  # type: ignore[assignment]
    return lambda: delattr(model, "forward_features")  # the class's method again


def _saliency(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
              why: str) -> Attribution:
    grads = Saliency(_Forward(model)).attribute(images, target=targets, abs=True)
    return Attribution(f"{SALIENCY} ({why})", _unit(grads.detach().float().amax(dim=1)))


def _unit(heat: torch.Tensor) -> np.ndarray:
    """Each (H, W) map scaled to [0, 1]; a flat one (no evidence anywhere) is all zeros."""
    heat = torch.nan_to_num(heat, nan=0.0, posinf=0.0, neginf=0.0)
    low = heat.amin(dim=(1, 2), keepdim=True)
    span = heat.amax(dim=(1, 2), keepdim=True) - low
    unit = torch.where(span > 0, (heat - low) / span.clamp_min(1e-12), torch.zeros_like(heat))
    return unit.clamp(0.0, 1.0).cpu().numpy().astype(np.float32)
