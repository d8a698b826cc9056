"""Installs taxfree3dmm: 3DMM-conditioned StyleGAN2 face generation without the quality tax."""

from setuptools import find_packages, setup

setup(
    name="taxfree3dmm",
    version="0.1.0",
    description="3DMM-conditioned face GANs without the quality tax (arXiv 2305.13460), in PyTorch",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(
        include=["torch_utils*", "training*", "deep3drecon*", "metrics*", "dataprep*", "generation*"]
    ),
    package_data={"torch_utils.ops": ["*.cpp", "*.cu", "*.h"]},
    install_requires=[
        "torch>=2.3",
        "torchvision>=0.18",
        "numpy>=1.24",
        "scipy>=1.10",
        "click>=8.0",
        "pillow>=9.5",
        "tensorboard>=2.12",
        "ninja>=1.11",
        "tqdm>=4.60",
        "torch-fidelity>=0.3",
    ],
    extras_require={
        # Tests: scikit-image ships the astronaut photograph the landmark tests run on; the faces extra's detector
        # weights are needed by those tests too.
        "dev": ["pytest>=7.4", "pytest-xdist>=3.3", "ruff>=0.4", "scikit-image>=0.21", "facenet-pytorch==2.5.3"],
        # Offline face detection: only the MTCNN weight files inside this MIT wheel are used (its code is not);
        # 2.5.3 is the last release that does not pin an old torch.
        "faces": ["facenet-pytorch==2.5.3"],
        "studio": ["gradio>=6.0", "gradio-client>=2.0"],  # generate.py studio (the browser editor)
        # Renderer backend 'nvdiffrast' (CUDA only): nvdiffrast 0.3.3's sources as packaged on the index under this
        # name. NVIDIA Source Code License (non-commercial), hence only ever optional; its CUDA plugin is compiled
        # with nvcc on first use (deep3drecon/render/rasterize_nvdiffrast.py).
        "nvdiffrast": ["diffrp-nvdiffrast==0.3.3.1"],
        "video": ["imageio-ffmpeg>=0.4.9"],  # generate.py vary --video mp4 (GIFs need only Pillow)
    },
)
