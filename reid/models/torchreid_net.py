"""torchreid's networks behind the toolkit's model interface (``MODEL.NAME torchreid``).

A user's torchreid model is explained as it is: :func:`torchreid_model` builds the network of
``torchreid.reid.models`` named by ``MODEL.TORCHREID.ARCH`` and gives it the methods of
:class:`~reid.models.base.ReidModel` *without changing a weight or a module name*: the object is
still an instance of the torchreid class (a subclass made once per class), so its state dict has
torchreid's own keys (a ``model.pth.tar-N`` of torchreid's engine loads as it is) and its layers
keep torchreid's names (``layer4``, ``conv5``, ...) for ``TEST.EXPLAIN_LAYER`` and ``SAM.LAYER``.

How each method reuses the arch's own code:

- **eval-mode forward**: torchreid's ``forward``, unchanged (the embedding torchreid ranks with).
- :meth:`TorchreidModel.forward_features`: the arch's trunk up to the last convolutional map
  before the pooling: its ``featuremaps`` method where it has one, else the modules listed for its
  family in :data:`FAMILIES` run in order.
- :meth:`TorchreidModel.embed_features`: torchreid's ``forward`` run on a given map: the trunk is
  swapped for "return this map" for the duration of the call and the network's own flag
  ``training`` set to False (its submodules keep their modes), so the pooling, FC, BatchNorm and
  normalisation code that run are the arch's own, bit for bit (tested against ``model(x)`` for
  every family in ``tests/models/test_torchreid_net.py``).
- **train-mode forward**: the same swap with ``training`` true gives torchreid's ``(logits,
  features)``, returned as the :class:`~reid.models.pcb.PCBOutput` the toolkit's PCB engine (ID +
  triplet) and similarity mining consume, with the map they need.

Families whose embedding is not a function of one map (HA-CNN's spatial-transformer branches,
MLFN's factor vectors, ResNet-mid's mid-level features, NASNet's pooling inside ``features``) are
refused with that reason (:func:`family_of`). docs/explanations.md has the table of families, the
layer each exposes and what each can explain.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .base import Explainability, ReidModel
from .pcb import PCBOutput
from .registry import register_model
from .state_files import TORCHREID_CHECKPOINT_GLOBALS  # noqa: F401  (importable from here as before)
from .state_files import StateFileError, read_state_file

logger = logging.getLogger(__name__)

with warnings.catch_warnings():  # torchreid warns at import that its Cython evaluator is missing
    warnings.simplefilter("ignore")
    from torchreid.reid import models as _torchreid_models

#: Every name of torchreid's model registry (the values ``MODEL.TORCHREID.ARCH`` accepts; the
#: families in :data:`REFUSED` are refused with their reason when the model is built).
TORCHREID_ARCHS: tuple[str, ...] = tuple(sorted(_torchreid_models.__model_factory))


@dataclass(frozen=True)
class Family:
    """How the toolkit splits one torchreid network class into trunk and head.

    Attributes:
        trunk: ``("featuremaps",)`` (the class's own method), or the child modules that produce
            the map, run in order.
        head_layer: the module whose output is that map (the layer explained at the head).
        head: ``gap`` (global average pooling, then the optional ``fc`` block), ``parts``
            (L2-normalised averages of horizontal stripes, torchreid's PCB) or ``other``.
        classifier: the identity classifier is ``classifier(embedding)`` (classifier Grad-CAM).
        min_input: the smallest ``(height, width)`` the family is tested at (MuDeep's FC layer
            fixes 256 x 128; the Inception families need their stride-2 stem to leave a map).
    """

    trunk: tuple[str, ...]
    head_layer: str
    head: str = "gap"
    classifier: bool = True
    min_input: tuple[int, int] = (64, 32)


#: The supported families, by torchreid class name.
FAMILIES: dict[str, Family] = {
    "ResNet": Family(("featuremaps",), "layer4"),  # resnet*, resnext*, resnet50_fc512, resnet50_ibn_a/b
    "SENet": Family(("featuremaps",), "layer4"),
    "OSNet": Family(("featuremaps",), "conv5"),  # osnet_*, osnet_ain_*, osnet_ibn_x1_0
    "MobileNetV2": Family(("featuremaps",), "conv9"),
    "ShuffleNetV2": Family(("featuremaps",), "conv5"),
    "Xception": Family(("featuremaps",), "bn4", min_input=(96, 48)),
    "InceptionResNetV2": Family(("featuremaps",), "conv2d_7b", min_input=(160, 96)),
    "PCB": Family(("featuremaps",), "layer4", head="parts", classifier=False, min_input=(96, 32)),
    "MuDeep": Family(("featuremaps",), "block5", head="other", min_input=(256, 128)),
    "DenseNet": Family(("features",), "features", head="other"),  # a ReLU follows the map
    "SqueezeNet": Family(("features",), "features"),
    "InceptionV4": Family(("features",), "features", min_input=(160, 96)),
    "ShuffleNet": Family(("conv1", "stage2", "stage3", "stage4"), "stage4"),
}

#: Families refused, with the reason.
REFUSED: dict[str, str] = {
    "HACNN": (
        "its embedding concatenates a global branch with four local branches cropped from the image by "
        "spatial transformers, so there is no one map it is pooled from"
    ),
    "MLFN": (
        "its embedding averages the pooled last map with the factor-selection vectors of every block "
        "(fc_s), so it is not a function of one map"
    ),
    "ResNetMid": "its embedding concatenates the pooled layer4 with mid-level features of layer4's blocks",
    "NASNetAMobile": "its features method pools inside, so no map before the pooling can be reached",
}


class TorchreidError(ValueError):
    """A torchreid arch that the toolkit cannot build or explain (the message says why)."""


def family_of(net: nn.Module, arch: str = "") -> Family:
    """The :class:`Family` of a torchreid network; TorchreidError with the reason if refused."""
    name = type(net).__name__
    for klass in type(net).__mro__:  # a network already wrapped: the torchreid class is a base
        if klass.__name__ in FAMILIES or klass.__name__ in REFUSED:
            name = klass.__name__
            break
    if name in REFUSED:
        raise TorchreidError(f"torchreid arch {arch or name} cannot be explained: {REFUSED[name]}")
    if name not in FAMILIES:
        raise TorchreidError(f"torchreid arch {arch or name} ({name}) is not a family the toolkit knows")
    return FAMILIES[name]


class _GivenMap(nn.Module):
    """Stands in for the trunk: returns a copy of the given map whatever its input (a copy, so
    that an in-place operation of the head, e.g. DenseNet's ReLU, leaves the caller's map as it is)."""

    def __init__(self, feature_map: torch.Tensor) -> None:
        super().__init__()
        self.feature_map = feature_map

    def forward(self, _x: torch.Tensor) -> torch.Tensor:
        return self.feature_map.clone()


class TorchreidModel(ReidModel):
    """The interface methods given to a torchreid network (see the module docstring).

    Never instantiated directly: :func:`as_reid_model` makes a torchreid network an instance of a
    subclass of both this class and the network's own class.
    """

    arch: str = ""
    family: Family

    # -- the interface ---------------------------------------------------------------------------

    @property
    def trunk_modules(self) -> list[nn.Module]:
        """Every child but the identity classifier and the FC block (the head trained from scratch)."""
        return [module for name, module in self.named_children() if name not in ("classifier", "fc")]

    @property
    def embedding_dim(self) -> int:
        """D, the size of the eval-mode embedding."""
        return self._embedding_dim

    def classifier_classes(self) -> int:
        """The number of identities of the classifier (the first one's, for PCB's per-part ones)."""
        classifier = self.classifier
        return int((classifier[0] if isinstance(classifier, nn.ModuleList) else classifier).out_features)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` images -> ``(B, C, h, w)`` map of ``explainability.head_layer``."""
        if self.family.trunk == ("featuremaps",):
            return type(self).featuremaps(self, x)
        for name in self.family.trunk:
            x = getattr(self, name)(x)
        return x

    def embed_features(self, feature_map: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` map -> ``(B, D)``: the arch's own eval-mode head (module docstring)."""
        return self._head(feature_map, training=False)

    def identity_logits(self, feature_map: torch.Tensor) -> torch.Tensor:
        """``(B, num_classes)``: the arch's classifier on the embedding of the map."""
        if not self.explainability.classifier:
            return super().identity_logits(feature_map)
        return self.classifier(self.embed_features(feature_map))

    def forward(self, x: torch.Tensor, *args, **kwargs):
        """Eval mode: torchreid's own forward (the embedding). Train mode: :class:`PCBOutput` with
        torchreid's logits (a list of one, or of one per part for PCB), its features ``(B, 1, D)``
        and the head map."""
        if not self.training:
            return super().forward(x, *args, **kwargs)
        feature_map = self.forward_features(x)
        logits, features = self._head(feature_map, training=True)
        logits = list(logits) if isinstance(logits, (list, tuple)) else [logits]
        return PCBOutput(logits=logits, features=features.flatten(1).unsqueeze(1), feature_map=feature_map)

    # -- the swap ----------------------------------------------------------------------------------

    @contextmanager
    def _given_map(self, feature_map: torch.Tensor) -> Iterator[None]:
        """For the duration: the trunk returns ``feature_map`` (module docstring)."""
        first, *rest = self.family.trunk
        if first == "featuremaps":
            given = _GivenMap(feature_map)
            object.__setattr__(self, "featuremaps", given.forward)  # shadows the method
            try:
                yield
            finally:
                object.__delattr__(self, "featuremaps")
            return
        saved = {name: self._modules[name] for name in self.family.trunk}
        self._modules[first] = _GivenMap(feature_map)
        for name in rest:
            self._modules[name] = nn.Identity()
        try:
            yield
        finally:
            self._modules.update(saved)

    def _head(self, feature_map: torch.Tensor, training: bool):
        """torchreid's forward on ``feature_map`` with the network's own flag set to ``training``
        (its children keep their modes): the embedding, or ``(logits, features)``."""
        flag = self.training
        with self._given_map(feature_map):
            self.training = training
            try:
                return super().forward(feature_map)
            finally:
                self.training = flag


_CLASSES: dict[type, type] = {}


def as_reid_model(net: nn.Module, arch: str, test_normalized: bool = False) -> TorchreidModel:
    """Gives the torchreid network ``net`` the model interface in place and returns it.

    Args:
        net: a network of ``torchreid.reid.models`` (built with ``loss='triplet'``, so that its
            train-mode forward returns logits and features).
        arch: its registry name (for messages and the checkpoint check).
        test_normalized: the test distance compares L2-normalised embeddings
            (``TEST.NORMALIZE_FEATURE`` or the cosine distance): then a plain global-average head
            splits exactly over cells (``explainability.decomposable_stripes`` 1).

    Raises:
        TorchreidError: a refused family (its reason) or an unknown class.
    """
    family = family_of(net, arch)
    base = type(net)
    if base not in _CLASSES:
        _CLASSES[base] = type(f"Torchreid{base.__name__}", (TorchreidModel, base), {"__module__": __name__})
    net.__class__ = _CLASSES[base]
    net.arch = arch
    net.family = family
    if family.head == "parts":  # the normalised stripes of the layer4 map, P x C
        stripes = int(net.parts)
        net._embedding_dim = stripes * int(net.conv5.layers[0].in_channels)
    else:
        stripes = 1 if family.head == "gap" and getattr(net, "fc", None) is None and test_normalized else 0
        dim = getattr(net, "feature_dim", None)
        net._embedding_dim = int(dim if dim is not None else net.classifier.in_features)
    classifier = family.classifier and isinstance(getattr(net, "classifier", None), nn.Linear)
    net.explainability = Explainability(
        head_layer=family.head_layer, classifier=classifier, decomposable_stripes=stripes,
    )
    return net


def load_weights_file(path: str) -> dict:
    """A weights file (a state dict, torchreid's checkpoint or ours) read with ``weights_only=True``
    (:func:`reid.models.state_files.read_state_file`, torchreid's NumPy rank-1 allowed).

    Raises:
        TorchreidError: the file is missing, unreadable or holds something else than a dict.
    """
    try:
        return read_state_file(path)
    except FileNotFoundError:
        raise TorchreidError(f"weights file not found: {path}") from None
    except StateFileError as exc:
        if exc.holds is not None:
            raise TorchreidError(f"{path} holds a {exc.holds}, not a state dict") from None
        raise TorchreidError(f"{path} is not a weights file or is damaged: {exc.reason}") from None


def load_matching_weights(net: nn.Module, state: dict, source: str) -> int:
    """Loads the entries of ``state`` whose name and shape match ``net``'s (torchreid's
    ``load_pretrained_weights``: ImageNet or re-id weights for a trunk, ``module.`` prefixes
    removed, the rest left at their initialisation); returns how many loaded.

    Raises:
        TorchreidError: nothing matched (the file is not weights of this arch).
    """
    state = state.get("state_dict", state)
    own = net.state_dict()
    matched = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key in own and isinstance(value, torch.Tensor) and own[key].shape == value.shape:
            matched[key] = value
    if not matched:
        raise TorchreidError(f"{source}: no weight matches the names and shapes of {type(net).__name__}")
    own.update(matched)
    net.load_state_dict(own)
    logger.info("loaded %d of %d weights of %s from %s (the others keep their initialisation)",
                len(matched), len(own), type(net).__name__, source)
    return len(matched)


def check_arch(arch: str, height: int, width: int) -> Family:
    """The family of ``arch`` for ``height`` x ``width`` inputs, without building the network.

    Raises:
        TorchreidError: unknown arch, a refused family (its reason), or an input size the family
            cannot take (MuDeep's FC layer is sized for 256 x 128).
    """
    if arch not in TORCHREID_ARCHS:
        raise TorchreidError(f"unknown torchreid arch {arch!r}; torchreid's registry has {list(TORCHREID_ARCHS)}")
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = _torchreid_models.build_model(arch, num_classes=1, loss="triplet", pretrained=False)
    family = family_of(net, arch)
    if family is FAMILIES["MuDeep"] and (height, width) != (256, 128):
        raise TorchreidError(f"{arch} takes 256 x 128 images only (its FC layer is sized for them), got {height} x {width}")
    return family


@register_model("torchreid")
def torchreid_model(
    num_classes: int, arch: str = "osnet_x0_25", pretrained: bool = True, pretrained_path: str = "",
    test_normalized: bool = False,
) -> TorchreidModel:
    """torchreid's ``arch`` with ``num_classes`` identities, as a toolkit model (module docstring).

    Args:
        num_classes: identities of its classifier.
        arch: a name of torchreid's registry (:data:`TORCHREID_ARCHS`).
        pretrained: start from ``pretrained_path`` when it is set.
        pretrained_path: weights to start from (:func:`load_matching_weights`); empty: torchreid's
            random initialisation. Nothing is ever downloaded.
        test_normalized: see :func:`as_reid_model`.

    Raises:
        TorchreidError: unknown or refused arch, or weights that do not match it.
    """
    if arch not in TORCHREID_ARCHS:
        raise TorchreidError(f"unknown torchreid arch {arch!r}; torchreid's registry has {list(TORCHREID_ARCHS)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = _torchreid_models.build_model(arch, num_classes=num_classes, loss="triplet", pretrained=False)
    model = as_reid_model(net, arch, test_normalized=test_normalized)
    if pretrained and pretrained_path:
        load_matching_weights(model, load_weights_file(pretrained_path), pretrained_path)
    return model


def resize_classifier(model: TorchreidModel, num_classes: int) -> None:
    """Replaces the identity classifier (one Linear, or one per part) by one of ``num_classes``
    outputs (new weights): a checkpoint trained on other identities then loads strictly."""
    def resized(linear: nn.Linear) -> nn.Linear:
        return nn.Linear(linear.in_features, num_classes, bias=linear.bias is not None)

    classifier = model.classifier
    if isinstance(classifier, nn.Linear):
        model.classifier = resized(classifier)
    elif isinstance(classifier, nn.ModuleList):
        model.classifier = nn.ModuleList(resized(layer) for layer in classifier)
    else:
        raise TorchreidError(f"{model.arch} has no identity classifier to resize")


def classifier_classes(state: dict) -> int:
    """The number of identities of a torchreid state dict's classifier."""
    for key in ("classifier.weight", "classifier.0.weight"):
        if key in state:
            return int(state[key].shape[0])
    raise ValueError(
        f"the weights hold no 'classifier.weight': not a torchreid network's state dict (keys such as "
        f"{sorted(state)[:3]})"
    )



def archs_of_state(state: dict) -> list[str]:
    """The torchreid archs whose state dict has exactly the names and shapes of ``state`` (the
    classifier aside, which is sized for the training identities); built on the meta device, so
    nothing is allocated."""
    def signature(items) -> dict:
        return {k.removeprefix("module."): tuple(v.shape) for k, v in items if not k.removeprefix("module.").startswith("classifier")}

    wanted = signature((k, v) for k, v in state.items() if isinstance(v, torch.Tensor))
    found = []
    for arch in TORCHREID_ARCHS:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                net = _torchreid_models.build_model(arch, num_classes=1, loss="triplet", pretrained=False)
            except Exception:  # noqa: BLE001 - an arch that cannot build here is simply not a candidate
                continue
        if signature(net.state_dict().items()) == wanted:
            found.append(arch)
    return found
