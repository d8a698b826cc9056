"""NVIDIA StyleGAN2 weight interop: the restricted pickle reader, the converter, and --init-from."""
