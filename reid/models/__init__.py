"""Models behind one interface (:class:`~reid.models.base.ReidModel`) and a small registry.

- :mod:`reid.models.base`: the interface every model implements (features, explained head,
  pairwise distance, what it can explain).
- :mod:`reid.models.trunks`: ResNet trunks shared by every model (local ImageNet weights only).
- :mod:`reid.models.pcb`: PCB (``docs/method.md`` section 1).
- :mod:`reid.models.avsl`: AVSL (``docs/method.md`` section 5).
"""

from .avsl import AVSL, AVSLFeatures, AVSLOutput
from .base import Explainability, ReidModel
from .pcb import PCB, PCBOutput
from .registry import create_model, list_models, register_model
from .trunks import BACKBONES, PADDING_MODES, find_pretrained_weights
from . import torchreid_net  # noqa: F401  (registers MODEL.NAME torchreid)

__all__ = [
    "AVSL", "AVSLFeatures", "AVSLOutput", "BACKBONES", "Explainability", "PADDING_MODES", "PCB", "PCBOutput",
    "ReidModel", "create_model", "find_pretrained_weights", "list_models", "register_model",
]
