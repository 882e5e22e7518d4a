"""Mixed precision and channels_last: bf16 autocast on the CPU in a PCB step, a PCB+SAM step,
feature extraction and an explanation; AMP off unchanged; the fp16 loss scaler's step."""

import json
import math
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from reid.config import ConfigError, load_config
from reid.engine.base import to_float32
from reid.engine.evaluation import extract_dataset_features
from reid.engine.pcb import PCBEngine
from reid.engine.sam import SAMEngine
from reid.explain import attention_maps, grad_cam, pair_weights
from reid.losses import combine
from reid.models.pcb import PCB, PCBOutput
from tests.conftest import tiny_overrides
from reid.cli import train as train_tool

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "synthetic_pcb.yaml")
NUM_IDS, PER_ID = 4, 2
CPU = torch.device("cpu")


def tiny_model(seed=0, dropout=0.5):
    torch.manual_seed(seed)
    return PCB(num_classes=NUM_IDS, backbone="resnet18", num_stripes=2, reduced_dim=16,
               dropout=dropout, pretrained=False)


def tiny_batch(seed=1, size=(32, 16)):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(NUM_IDS * PER_ID, 3, *size, generator=generator)
    return {"img": images, "pid": torch.arange(NUM_IDS).repeat_interleave(PER_ID)}


def make_engine(cls=PCBEngine, model=None, lr=0.01, **kwargs):
    model = tiny_model() if model is None else model
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    datamanager = SimpleNamespace(train_loader=[], test_loader={})
    return cls(datamanager, model, optimizer, scheduler, CPU, "unused", progress=False, **kwargs)


def record_dtypes(module):
    """Records the dtype of every output of ``module``."""
    dtypes = []
    module.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    return dtypes


@pytest.mark.parametrize("cls", [PCBEngine, SAMEngine])
def test_bf16_step_runs_under_autocast_with_finite_float32_results(cls):
    engine = make_engine(cls, amp="bf16")
    reference = make_engine(cls, amp="off")
    dtypes = record_dtypes(engine.model.layer4)
    before = [p.detach().clone() for p in engine.model.parameters()]
    torch.manual_seed(5)
    terms = engine.forward_backward(tiny_batch())
    torch.manual_seed(5)
    expected = reference.forward_backward(tiny_batch())
    # the batch (and for SAM the masked images) went through the trunk in bfloat16
    assert dtypes == [torch.bfloat16] * (2 if cls is SAMEngine else 1)
    assert set(terms) == set(expected)
    assert all(math.isfinite(v) for v in terms.values())
    for name in ("id", "triplet", "loss"):
        assert terms[name] == pytest.approx(expected[name], rel=0.05, abs=0.02), name
    changed = [not torch.equal(a, p) for a, p in zip(before, engine.model.parameters())]
    assert sum(changed) > len(changed) // 2
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in engine.model.parameters())


def test_bf16_sam_maps_and_masked_embeddings_are_float32():
    engine = make_engine(SAMEngine, amp="bf16")
    batch = tiny_batch()
    engine.model.train()
    torch.manual_seed(2)
    with engine.autocast():
        output = engine.model(batch["img"])
    assert output.feature_map.dtype == torch.bfloat16
    output = engine.float32(output)
    _, mined = engine.metric_terms(output, batch["pid"])
    step = engine.similarity_mining(batch["img"], output, mined)
    assert step.loss.dtype == torch.float32 and torch.isfinite(step.loss)
    for role, maps in step.maps.items():
        assert maps.dtype == torch.float32 and torch.isfinite(maps).all(), role
        assert step.embeddings[role].dtype == torch.float32
    step.loss.backward()  # reaches the bf16 trunk through the casts
    assert torch.isfinite(engine.model.layer4[0].conv1.weight.grad).all()


def test_amp_off_step_is_the_plain_float32_step():
    engine = make_engine(amp="off")
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    batch = tiny_batch()
    torch.manual_seed(3)
    terms = engine.forward_backward(batch)
    torch.manual_seed(3)
    model.train()
    output = model(batch["img"])
    loss = combine(engine.metric_terms(output, batch["pid"])[0], engine.weights)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert terms["loss"] == float(loss.detach())
    for a, b in zip(engine.model.parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_grad_cam_is_computed_in_float32():
    generator = torch.Generator().manual_seed(0)
    activations = torch.rand(2, 8, 4, 3, generator=generator).bfloat16()
    gradients = torch.randn(2, 8, 4, 3, generator=generator).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = grad_cam(activations, gradients)
    assert maps.dtype == torch.float32
    alpha = gradients.float().mean(dim=(2, 3), keepdim=True)
    assert torch.equal(maps, F.relu((alpha * activations.float()).sum(1)))


def test_explanation_under_bf16_autocast_is_float32_finite_and_close_to_fp32():
    model = tiny_model(dropout=0.0).eval()
    images = tiny_batch(size=(64, 32))["img"][:4]
    with torch.no_grad():
        f = F.normalize(model(images), dim=1)
    weights = pair_weights(f[[0, 2]], f[[1, 3]], same=True).repeat(2, 1)
    order = torch.tensor([0, 2, 1, 3])
    reference, _ = attention_maps(model, "layer4", images[order], weights)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps, embeddings = attention_maps(model, "layer4", images[order], weights)
    assert maps.dtype == torch.float32 and embeddings.dtype == torch.float32
    assert torch.isfinite(maps).all() and (maps >= 0).all()
    similarity = F.cosine_similarity(maps.flatten(1), reference.flatten(1), dim=1)
    assert (similarity > 0.9).all(), similarity


def test_feature_extraction_in_bf16_and_channels_last():
    model = tiny_model().eval()
    batches = [{**tiny_batch(seed), "camid": torch.zeros(8), "impath": ["x"] * 8} for seed in (1, 2)]
    reference = extract_dataset_features(model, batches, CPU, progress=False)
    mixed = extract_dataset_features(model, batches, CPU, progress=False, amp="bf16", channels_last=True)
    assert mixed.features.dtype == torch.float32 and mixed.features.shape == reference.features.shape
    similarity = F.cosine_similarity(mixed.features, reference.features, dim=1)
    assert (similarity > 0.99).all(), similarity
    with pytest.raises(RuntimeError, match="fp16 needs a CUDA device"):
        extract_dataset_features(model, batches, CPU, progress=False, amp="fp16")


def test_fp16_is_refused_on_the_cpu():
    with pytest.raises(RuntimeError, match="fp16 needs a CUDA device"):
        make_engine(amp="fp16")
    with pytest.raises(ConfigError, match="TRAIN.AMP fp16 needs a CUDA device"):
        load_config(None, ["DEVICE", "cpu", "TRAIN.AMP", "fp16"])
    with pytest.raises(ConfigError, match="TRAIN.AMP must be one of"):
        load_config(None, ["TRAIN.AMP", "fp8"])


def test_loss_scaler_step_unscales_gradients_and_skips_overflows():
    """The fp16 path of backward_step (GradScaler) on the CPU with a real scaler."""
    engine = make_engine(model=tiny_model(dropout=0.0), lr=0.1)
    engine.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    plain = tiny_model(dropout=0.0)
    optimizer = torch.optim.SGD(plain.parameters(), lr=0.1)
    batch = tiny_batch()
    engine.forward_backward(batch)
    output = plain.train()(batch["img"])
    loss = combine(engine.metric_terms(output, batch["pid"])[0], engine.weights)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    for a, b in zip(engine.model.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    before = [p.detach().clone() for p in engine.model.parameters()]
    scale = engine.scaler.get_scale()
    parameter = next(engine.model.parameters())
    engine.backward_step(parameter.sum() * float("inf"))
    assert all(torch.equal(a, p) for a, p in zip(before, engine.model.parameters()))  # step skipped
    assert engine.scaler.get_scale() == scale / 2


def test_channels_last_engine_matches_contiguous_engine():
    engine = make_engine(model=tiny_model(dropout=0.0), channels_last=True)
    reference = make_engine(model=tiny_model(dropout=0.0))
    assert engine.model.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    batch = tiny_batch()
    assert engine.to_device(batch)[0].is_contiguous(memory_format=torch.channels_last)
    terms, expected = engine.forward_backward(batch), reference.forward_backward(batch)
    for name in ("id", "triplet", "loss"):
        assert terms[name] == pytest.approx(expected[name], rel=1e-4), name


def test_to_float32_casts_outputs_and_keeps_the_graph():
    x = torch.ones(2, 3, requires_grad=True)
    output = PCBOutput(logits=[x.bfloat16()], features=x.bfloat16() * 2, feature_map=x.view(2, 3, 1, 1))
    cast = to_float32(output)
    assert isinstance(cast, PCBOutput)
    assert cast.logits[0].dtype == cast.features.dtype == torch.float32
    assert cast.feature_map is output.feature_map  # already float32: not copied
    cast.features.sum().backward()
    assert torch.equal(x.grad, torch.full((2, 3), 2.0))


def test_train_tool_with_bf16_and_channels_last(tiny_data_root, tmp_path):
    out = tmp_path / "run"
    metrics = train_tool.main(
        ["--config", CONFIG, "--no-progress", *tiny_overrides(tiny_data_root, out),
         "TRAIN.AMP", "bf16", "TRAIN.CHANNELS_LAST", "True"]
    )
    assert 0.0 <= metrics["mAP"] <= 1.0 and math.isfinite(metrics["history"][0]["loss"])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["config"]["TRAIN"]["AMP"] == "bf16" and saved["rank1"] == metrics["rank1"]


def test_bf16_avsl_step_is_finite_and_keeps_float32_edges():
    from reid.engine.avsl import AVSLEngine
    from reid.models import create_model

    torch.manual_seed(0)
    model = create_model("avsl", num_classes=NUM_IDS, backbone="resnet18", embed_dim=8, topk=4, pretrained=False)
    engine = make_engine(AVSLEngine, model=model, amp="bf16")
    dtypes = record_dtypes(engine.model.layer4)
    terms = engine.forward_backward(tiny_batch())
    assert dtypes == [torch.bfloat16]
    assert {"metric_layer4", "overall", "loss", "reliability"} <= set(terms)
    assert all(math.isfinite(v) for v in terms.values())
    for edge in engine.model.edges:
        assert edge.dtype == torch.float32 and torch.isfinite(edge).all()
