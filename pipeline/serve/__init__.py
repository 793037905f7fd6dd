"""Serve: a draw-a-digit page and a JSON API on checkpoints (torch) or .onnx graphs (no torch)."""
