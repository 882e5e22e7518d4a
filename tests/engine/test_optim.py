"""Optimisers and schedules from plain options: groups, learning rates, schedules by hand."""

import pytest
import torch

from reid.engine.optim import OPTIMIZERS, SCHEDULERS, make_optimizer, make_scheduler
from reid.models import create_model


def model():
    torch.manual_seed(0)
    return create_model("pcb", num_classes=3, backbone="resnet18", num_stripes=2, reduced_dim=4, pretrained=False)


def test_trunk_group_first_with_its_multiplier():
    m = model()
    sgd = make_optimizer(m, "sgd", 0.1, trunk_lr_mult=0.1, momentum=0.9, weight_decay=5e-4)
    trunk, new = sgd.param_groups
    assert trunk["lr"] == pytest.approx(0.01) and new["lr"] == pytest.approx(0.1)
    assert len(trunk["params"]) == sum(1 for t in m.trunk_modules for _ in t.parameters())
    assert len(trunk["params"]) + len(new["params"]) == len(list(m.parameters()))
    assert sgd.defaults["nesterov"] and isinstance(sgd, torch.optim.SGD)
    assert not make_optimizer(m, "sgd", 0.1, momentum=0.0).defaults["nesterov"]
    adam = make_optimizer(m, "adam", 1e-3, adam_betas=[0.5, 0.9])
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["betas"] == (0.5, 0.9)


def test_schedules_by_hand():
    def lrs(name, **kw):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = make_scheduler(opt, name, **kw)
        out = []
        for _ in range(4):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    assert lrs("single_step", stepsize=[2], gamma=0.1) == pytest.approx([1.0, 1.0, 0.1, 0.1])
    assert lrs("multi_step", stepsize=[1, 3], gamma=0.5) == pytest.approx([1.0, 0.5, 0.5, 0.25])
    assert lrs("cosine", max_epoch=2) == pytest.approx([1.0, 0.5, 0.0, 0.5])


def test_unknown_names_are_refused():
    assert OPTIMIZERS == ("sgd", "adam") and SCHEDULERS == ("single_step", "multi_step", "cosine")
    with pytest.raises(ValueError, match="optimiser must be one of"):
        make_optimizer(model(), "rmsprop", 0.1)
    with pytest.raises(ValueError, match="scheduler must be one of"):
        make_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), "poly")
