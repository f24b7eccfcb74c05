"""Inference: pre/post-processing as pure functions, the Predictor."""
