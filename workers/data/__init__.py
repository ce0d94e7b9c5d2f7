"""A dataset, from its source to the decoded pixels a trial trains on.

`sources.load_index` dispatches on the source (an ImageFolder tree, a CSV manifest,
`builtin:digits`, parquet/arrow tables) and returns one `DatasetIndex`; `decoded_cache` decodes
its images once per machine; `loaders` serve them to a DataLoader. Every user mistake found here
raises `DatasetError` with the path and the fix.
"""
