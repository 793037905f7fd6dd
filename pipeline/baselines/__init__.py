"""Baselines: the tutorial systems and scripts, each a plain function that returns its result."""
