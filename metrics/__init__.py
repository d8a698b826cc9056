"""Evaluation metrics: FID/KID (Inception features), the disentanglement score DS, 3DMM consistency."""
