"""Training: the settings, the models, the loop, resumable run state and checkpoints."""
