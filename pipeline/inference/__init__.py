"""Inference: the one predictor, predict -> submission, evaluate, export, ONNX Runtime."""
