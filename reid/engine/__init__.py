"""Thin torchreid ``Engine`` subclasses combining a model with its losses."""

from .avsl import AVSLEngine
from .base import EvalOptions, ReidEngine
from .pcb import PCBEngine
from .sam import SAMEngine

__all__ = ["AVSLEngine", "EvalOptions", "PCBEngine", "ReidEngine", "SAMEngine"]
