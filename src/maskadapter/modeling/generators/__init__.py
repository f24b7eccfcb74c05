"""Mask generators: FC-CLIP / MAFT+ decoders (pure PyTorch), SAM, ground truth, user masks."""
