"""Kaggle Digit Recognizer: from train.csv to a strong, valid submission.csv, stage by stage."""

__version__ = "0.1.0"
