"""Experiments: ensembles and bagging, crossval, tune, tracking in MLflow, runs, Kaggle submit."""
