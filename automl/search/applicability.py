"""Whether the warm-start portfolio's knowledge applies to a job's space.

The portfolios (`automl/search/portfolios.json`) were derived from recorded fine-tuning runs of
ImageNet-pretrained timm backbones (`DEFAULT_BACKBONES`, the replay benchmark's data). Their
learning rates (down to 1e-5), batch sizes (often 8) and freezing suit those weights on those
architectures; on a backbone no recorded run used, or on weights of the user's own (`pretrained:
FILE`) or none (`pretrained: false`), they start the search in the wrong place. A real job (10
classes, 3,000 images, a resnet10t with the user's weights) reached 0.803 test accuracy with the
portfolio where the sampler alone reached 0.842. On recorded runs, the replay that holds each
backbone family out of the portfolio (`automl-bench replay --hold-out-backbones`) found keeping
the members' other settings on the unknown family worse than random sampling at 4 h (mean regret
0.072 vs 0.066), and re-centring their lr, batch size and warmup no cure (0.075). So there the
job falls back to the sampler alone: decided once, when the job's strategy is built, and stated
(`automl run` prints it; the study's `warm_start_off` attribute).
"""

from __future__ import annotations

from collections.abc import Iterable

from automl.search.space import DEFAULT_BACKBONES, SearchSpace

# the backbones of the recorded runs the shipped portfolios were derived from (the replay's
# `_RECORDED_BACKBONE` maps the recorded names to exactly these; tests/benchmarks checks it)
RECORDED_BACKBONES: frozenset[str] = frozenset(DEFAULT_BACKBONES)


def architecture(backbone: str) -> str:
    """A timm name without its hub prefix and pretrained tag: `timm/resnet10t.a1_in1k` ->
    `resnet10t` (the same architecture under another ImageNet tag is still what was recorded)."""
    return backbone.removeprefix("hf-hub:").removeprefix("timm/").split(".", 1)[0]


def warm_start_off(space: SearchSpace, recorded: Iterable[str] = RECORDED_BACKBONES) -> str | None:
    """Why the portfolio derived from runs of `recorded` backbones does not apply to `space`
    (one line), or None when it does: the space's backbones include none that was recorded, or
    its trials start from weights other than the model hub's ImageNet ones."""
    weights = [w for w in space.pretrained() if w is not True]
    if weights:
        what = ("from scratch (pretrained: false)" if weights[0] is False
                else f"from the user's weights (pretrained: {weights[0]})")
        return (f"trials start {what}; the portfolio's learning rates and batch sizes were "
                "recorded on ImageNet-pretrained weights")
    known = {architecture(b) for b in recorded}
    backbones = space.backbones()
    if not any(architecture(b) in known for b in backbones):
        named = ", ".join(backbones[:3]) + (", ..." if len(backbones) > 3 else "")
        return (f"no recorded run used backbone {named}; the portfolio's learning rates and "
                "batch sizes were recorded on other backbones")
    return None
