"""Explainable person re-identification: PCB, similarity attention, AVSL, on top of torchreid."""

import os

__version__ = "0.1.0"

# PyTorch 2.14.1's oneDNN bfloat16 convolutions on CPUs with AMX (e.g. Xeon Sapphire Rapids) give
# different results for the same model and input from one call to the next once a float32
# convolution has run in the process (measured: up to 5.9 on a layer4 map of magnitude ~6, and
# NaN features), which breaks TRAIN.AMP bf16 on such CPUs. Capping oneDNN below AMX removes it;
# float32 never uses AMX, so only bf16 speed is affected. It must be set before the first oneDNN
# primitive is created, hence here; a value the user set wins. See docs/training.md.
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
