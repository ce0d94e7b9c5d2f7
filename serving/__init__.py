"""The serving plane: a published model behind HTTP, and what it records for monitoring.

`automl serve-model` runs `serving.app` (onnxruntime behind FastAPI: the KServe v2 / Open
Inference Protocol routes, `POST /predict`, Prometheus `/metrics`, dynamic batching);
`serving.repository` is the Triton / KServe model repository layout `automl deploy` writes and
the server reads; `serving.signature` is the small description of an input image the server
records and the monitor compares with the training reference.

A serving node needs onnxruntime, FastAPI, Pillow, numpy and the database driver only: this
package imports neither torch, Ray, Optuna, timm nor the control plane (an import-linter contract
says so; it may use the trial engine's torch-free image decoder, so serving decodes exactly as
training did).
"""
