"""Sampling with a trained generator: generate.py's shared session (`session`), the cell sampler and the paper's
figure modes (`controlled`), the fig. 2 diagnostic (`feature_derivatives`), real-photo inversion and edits
(`inversion`, `real_edit`) and the browser editor (`studio_state`, `studio`)."""
