"""Thin torchreid ``Engine`` subclasses combining a model with its losses."""

from .base import EvalOptions, ReidEngine
from .pcb import PCBEngine

__all__ = ["EvalOptions", "PCBEngine", "ReidEngine"]
