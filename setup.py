"""Installable package ``reid``: explainable person re-identification on torchreid."""

from pathlib import Path

from setuptools import find_packages, setup

_README = Path(__file__).resolve().parent / "README.md"

setup(
    name="reid-explain",
    version="0.1.0",
    description="Person re-identification that explains itself: PCB, similarity attention, AVSL",
    long_description=_README.read_text(encoding="utf-8") if _README.is_file() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["reid", "reid.*"]),
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "torchreid==0.2.5",
        # torchreid 0.2.5 declares no dependencies; these are what it imports.
        "opencv-python-headless",
        "tensorboard",
        "gdown",
        "h5py",
        "scipy",
        "imageio",
        "Pillow",
        "numpy",
        "pyyaml",
        "yacs",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest", "grad-cam==1.5.7", "faiss-cpu", "onnx", "onnxruntime", "onnxscript"],
        "export": ["onnx", "onnxruntime", "onnxscript"],
        "faiss": ["faiss-cpu"],
    },
)
