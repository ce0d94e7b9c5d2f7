"""`automl evaluate`: how far to trust a model, on any labeled images.

    automl evaluate --checkpoint model/                      # its job's own test split
    automl evaluate --checkpoint model/ --dataset new-photos/ --html report.html
    automl evaluate --checkpoint model/ --dataset labels.csv --split all --json > report.json

One evaluation of a checkpoint (a trial's, or a model folder `automl pull` wrote) gives:

- **Scores**: accuracy; macro and weighted precision, recall and F1; macro AUROC (one-vs-rest);
  a per-class table (precision, recall, F1, AUROC, support) and the confusion matrix; ROC and
  precision-recall curves, one-vs-rest, per class. All computed by torchmetrics.
- **Intervals**: 95% bootstrap intervals (percentile, 1000 resamples, seeded by `--seed`) and
  standard errors of the summary scores and the ECE (`bootstrap.py`), which `--against JOB`
  uses to say whether a job's published scores differ from these beyond noise.
- **Calibration**: the expected calibration error (ECE, 15 equal-width confidence bins) and
  the reliability diagram's bins; the temperature T that calibrates the model (logits / T),
  fitted on a validation split by minimizing its negative log-likelihood, and the ECE and NLL
  once divided by it. Accuracy does not change with T; only the confidences do.
- **Robustness**: the same scores under six corruptions at three severities each (Gaussian
  noise, Gaussian blur, brightness, contrast, JPEG quality, rotation with down-scaling; after
  ImageNet-C, Hendrycks & Dietterich 2019), applied to the evaluation crops before they are
  normalized; per corruption the relative accuracy drop ((clean - corrupted) / clean, the mean
  over its severities) and the mean over corruptions. Deterministic given `--seed`.
- **Worst errors** (`--worst N`, default 12, 0 for none): the N most confidently wrong images,
  most confident first: dataset index and file, true and predicted class, confidence, and where
  the model looked for the class it chose, a Grad-CAM heatmap on the model's final feature map
  (gradient saliency where there is no usable map; `method` says which) blended into the eval
  crop as a small base64 PNG: the only pixels in the report (workers/evaluate/worst.py).

It prints a summary table; `--json` prints the whole report as one JSON document instead and
`--html FILE` writes a self-contained page (tables, and the confusion matrix, ROC, PR,
reliability and robustness charts and the worst errors as inline images) that opens offline.

Which images (`--dataset`, `--split`):

- Without `--dataset` (or with the checkpoint's own dataset source), the checkpoint's own
  dataset, split exactly as its job split it (same fractions and seed, or its split folders);
  `--split` defaults to `test`, the images the search never looked at.
- Any other dataset source a job can read (an ImageFolder tree, a CSV manifest, parquet or
  arrow tables, builtin:digits) is matched to the model **by class name**. `--split` defaults
  to `test` when the dataset has test images of its own (a `test/` split folder, test shards),
  otherwise to `all` of its images. `val` and `test` are only ever the data's own split
  folders or shards (nothing is carved out of a foreign dataset); `train` is the rest.
- A class in the data that the model does not know is refused (one line naming it); classes
  of the model with no image in the evaluated split are allowed, listed in the report
  (`absent_classes`), and left out of the macro AUROC (a one-vs-rest curve needs positives).

The temperature is fitted on the checkpoint's own validation split when its dataset can be
read here (the data the model was selected on); otherwise on the evaluated dataset's val split
when that is disjoint from the evaluated images (`--split test` or `train`); otherwise it is
not fitted and the report says why.

Bad input (not a model folder, an empty folder, an unreadable image, an unknown class, an
unknown split) is one line and exit code 2, and nothing is written.
"""
