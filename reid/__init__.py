"""Explainable person re-identification: PCB, similarity attention, AVSL, on top of torchreid."""

__version__ = "0.1.0"
