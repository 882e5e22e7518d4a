"""Models: PCB and AVSL behind a small registry."""

from .avsl import AVSL, AVSLFeatures, AVSLOutput
from .pcb import PCB, PCBOutput, find_pretrained_weights
from .registry import create_model, list_models, register_model

__all__ = [
    "AVSL", "AVSLFeatures", "AVSLOutput", "PCB", "PCBOutput", "create_model",
    "find_pretrained_weights", "list_models", "register_model",
]
