"""Datasets as people download them: parquet files and folders saved by `datasets.save_to_disk`.

The Hugging Face image-dataset format: one row per image, an image column (the encoded file's
bytes, a path to it, or the Hub's `{"bytes", "path"}` struct) and a label column; the Hub writes
the class names into the schema metadata (`b"huggingface"`, a ClassLabel feature). A
`save_to_disk` folder holds the same table as Arrow IPC stream files with `state.json` and
`dataset_info.json`, so pyarrow alone reads both.

Indexing reads the label column and the files' row counts only; image bytes are read in batches
of rows, when verifying on the driver and when decoding into the cache, never a whole file at
once. pyarrow is imported inside the functions that need it, in this package only: every other
source runs on a machine without it (DESIGN.md).

`reader` indexes a table dataset; `shards` finds its files, `arrow` reads them, `columns` infers
the image and label columns, `labels` maps labels to classes and splits, `images` resolves each
row's image (bytes kept in the table, or a file it names).
"""
