"""Neural network modules: the CLIP backbone wrapper, the Mask-Adapter head, pooling and text classification."""
