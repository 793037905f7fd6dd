"""Bench: `pipeline bench`'s speed figures, each against a baseline measured in the same run."""
