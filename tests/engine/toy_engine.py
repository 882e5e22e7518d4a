"""A tiny engine over hand-made batches (a linear embedding, two training batches per epoch, one
test target), fast enough to run whole training runs in the hook tests."""

from types import SimpleNamespace

import torch
from torch import nn

from reid.engine.base import ReidEngine
from reid.models import ReidModel

NUM_BATCHES = 2


class ToyModel(ReidModel):
    """A linear embedding of the flattened image behind the model interface (default distance)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 2, 8))

    @property
    def embedding_dim(self) -> int:
        return 8

    def forward(self, x):
        return self.net(x)


class ToyEngine(ReidEngine):
    """One term, ``mse``: the squared embedding, weight 1."""

    weights = {"mse": 1.0}

    def forward_backward(self, data):
        images, _ = self.to_device(data)
        return self.optimise({"mse": self.model(images).pow(2).mean()})


def _batch(pids, camids, seed):
    generator = torch.Generator().manual_seed(seed)
    return {
        "img": torch.randn(len(pids), 3, 4, 2, generator=generator),
        "pid": torch.tensor(pids),
        "camid": torch.tensor(camids),
        "impath": [f"{seed}_{i}.png" for i in range(len(pids))],
    }


def make_toy_engine(output_dir, **kwargs):
    """A :class:`ToyEngine` writing to ``output_dir`` (seeded model, SGD, StepLR)."""
    torch.manual_seed(0)
    model = ToyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    train = [_batch([0, 0, 1, 1], [0, 1, 0, 1], seed) for seed in range(NUM_BATCHES)]
    test = {"toy": {"query": [_batch([0, 1], [0, 0], 10)], "gallery": [_batch([0, 1, 0, 1], [1, 1, 1, 1], 11)]}}
    datamanager = SimpleNamespace(train_loader=train, test_loader=test)
    return ToyEngine(datamanager, model, optimizer, scheduler, torch.device("cpu"), str(output_dir),
                     progress=False, **kwargs)


def without_timing(metrics):
    """``metrics.json`` content without ``train_seconds`` (wall time, different on every run)."""
    assert metrics["train_seconds"] >= 0.0
    return {key: value for key, value in metrics.items() if key != "train_seconds"}
