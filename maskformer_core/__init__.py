"""Pure-PyTorch MaskFormer: models, matching, losses, inference, metrics and data formats."""
