"""Experiments built on the packages: the post-training report of the built-in world."""
