"""Sampling with a trained generator: the cell sampler and the paper's figure modes (`controlled`), and the fig. 2
feature-derivative diagnostic (`feature_derivatives`). Used by generate.py."""
