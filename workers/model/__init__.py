"""The model: a timm backbone with a new head, its preprocessing, its pretrained weights, its
checkpoints (safetensors + JSON), the timm-layout folder a published model is, and its costs."""
