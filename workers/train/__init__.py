"""One fine-tuning trial: the epoch loop and evaluation, the device policy, the prepared data,
the optimizer and learning-rate schedule, augmentation (on the CPU or the device) and metrics.

Nothing here imports Ray, Optuna or a database, so the same loop runs, and is benchmarked, on a
bare GPU box; Ray Tune drives it through workers/tune_adapter.py.
"""
