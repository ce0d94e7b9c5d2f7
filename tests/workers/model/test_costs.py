"""Latency on onnxruntime is measured for backbones the TorchScript exporter cannot translate."""

from __future__ import annotations

import torch

from workers.model.costs import model_latency
from workers.model.target import LatencyTarget


class _Folding(torch.nn.Module):
    """Unfold + fold, as VOLO's outlook attention does: col2im, which the TorchScript-based
    ONNX exporter cannot translate."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = x.shape[-1]
        patches = torch.nn.functional.unfold(x, kernel_size=3, padding=1)
        folded = torch.nn.functional.fold(patches, (side, side), kernel_size=3, padding=1)
        return folded.mean(dim=(2, 3))


def test_a_model_only_the_torch_export_exporter_translates_is_still_timed() -> None:
    latency = model_latency(_Folding().eval(), 16, LatencyTarget(batch=2), warmup=1, runs=2)
    assert 0 < latency < 10_000
