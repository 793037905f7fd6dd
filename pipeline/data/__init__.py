"""Data: download the raw CSVs, validate and prepare them into cached uint8 tensors, Datasets."""
