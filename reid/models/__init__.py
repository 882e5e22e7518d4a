"""Models: PCB (and later AVSL) behind a small registry."""

from .pcb import PCB, PCBOutput, find_pretrained_weights
from .registry import create_model, list_models, register_model

__all__ = ["PCB", "PCBOutput", "create_model", "find_pretrained_weights", "list_models", "register_model"]
