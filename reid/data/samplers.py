"""Training samplers for distributed (multi-process) training.

:class:`DistributedIdentitySampler` is the multi-process counterpart of torchreid's
``RandomIdentitySampler``: every step, each process gets a P x K batch (P identities, K images
of each), and the processes together form one global batch of ``P x world_size`` distinct
identities.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)

# Training samplers of torchreid's ImageDataManager (SAMPLER.TRAIN): P x K identities, or plain shuffling.
TRAIN_SAMPLERS = ("RandomIdentitySampler", "RandomSampler")

__all__ = ["DistributedIdentitySampler"]


class DistributedIdentitySampler(Sampler[int]):
    """P x K identity batches split over processes; each identity once per epoch (per pass).

    One pass: the training identities in a random order (the same on every process), cut into
    global batches of ``P x num_replicas`` identities; process ``r`` takes identities
    ``[r P, (r + 1) P)`` of each global batch, with K images of each (drawn without replacement
    when the identity has at least K images, with replacement otherwise). Every identity
    therefore appears exactly once per pass across the processes, unless the number of
    identities is not a multiple of the global batch: then the pass's last global batch is
    completed with the first identities of its order (which then appear twice), so every process
    runs the same number of steps. No identity appears twice in one global batch.

    An epoch is ``passes`` passes (1 by default: each identity once per epoch), drawn from one
    generator seeded by ``seed + epoch``: ``passes x ceil(num_ids / (P num_replicas))`` steps.
    torchreid's ``RandomIdentitySampler`` instead cuts all images of each identity into chunks
    of K, so its epoch is longer by about ``images per identity / K``; ``passes`` of that size
    gives a comparable epoch (``reid.builders`` logs the value that matches).

    Call :meth:`set_epoch` before each epoch (the engine does). Use it with
    ``DataLoader(dataset, sampler=sampler, batch_size=batch_size, drop_last=True)``; the indices
    come out batch after batch, each batch identity-major (K images of an identity in a row).

    Args:
        data_source: the training items, ``(path, pid, camid, ...)`` tuples (torchreid's
            ``dataset.train``); only the pid is used.
        batch_size: images per process and step, ``P x K``.
        num_instances: K, images per identity.
        num_replicas: number of processes.
        rank: this process's rank.
        seed: base seed; epoch ``e`` uses ``seed + e``.
        passes: passes over the identities per epoch.

    Raises:
        ValueError: ``batch_size`` not a multiple of ``num_instances``, a bad rank, or fewer
            identities than one global batch needs.
    """

    def __init__(
        self,
        data_source: Sequence[Sequence[Any]],
        batch_size: int,
        num_instances: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        passes: int = 1,
    ) -> None:
        if num_instances < 1 or batch_size < num_instances or batch_size % num_instances:
            raise ValueError(
                f"batch_size ({batch_size}) must be a positive multiple of num_instances ({num_instances})"
            )
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        if passes < 1:
            raise ValueError(f"passes must be >= 1, got {passes}")
        index_of_pid: dict[Any, list[int]] = defaultdict(list)
        for index, item in enumerate(data_source):
            index_of_pid[item[1]].append(index)
        self.index_of_pid = dict(index_of_pid)
        self.pids = sorted(self.index_of_pid)
        self.batch_size = batch_size
        self.num_instances = num_instances
        self.ids_per_batch = batch_size // num_instances
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.passes = passes
        self.epoch = 0
        global_ids = self.ids_per_batch * num_replicas
        if len(self.pids) < global_ids:
            raise ValueError(
                f"{len(self.pids)} identities cannot fill one global batch of {global_ids} identities "
                f"({self.ids_per_batch} per process x {num_replicas} processes)"
            )
        self.batches_per_pass = math.ceil(len(self.pids) / global_ids)
        self.num_batches = passes * self.batches_per_pass
        padding = self.batches_per_pass * global_ids - len(self.pids)
        if padding:
            logger.info(
                "%d identities are not a multiple of the global batch's %d: %d identities repeat "
                "in each pass's last batch", len(self.pids), global_ids, padding,
            )

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose order :meth:`__iter__` yields (seed ``seed + epoch``)."""
        self.epoch = epoch

    def global_batches(self) -> list[list[Any]]:
        """The current epoch's global batches: ``num_batches`` lists of ``P x num_replicas`` pids."""
        return self._global_batches(self._generator())

    def batches(self) -> list[list[int]]:
        """This process's batches of the current epoch: ``num_batches`` lists of ``P x K`` indices.

        Every process draws the images of every identity from the same generator in the global
        order, so the processes agree without communicating.
        """
        generator = self._generator()
        start = self.rank * self.ids_per_batch
        out = []
        for pids in self._global_batches(generator):
            picks = [self._pick(pid, generator) for pid in pids]
            out.append([i for chosen in picks[start : start + self.ids_per_batch] for i in chosen])
        return out

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed + self.epoch)

    def _global_batches(self, generator: torch.Generator) -> list[list[Any]]:
        global_ids = self.ids_per_batch * self.num_replicas
        batches = []
        for _ in range(self.passes):
            order = [self.pids[i] for i in torch.randperm(len(self.pids), generator=generator).tolist()]
            order += order[: self.batches_per_pass * global_ids - len(order)]
            batches += [order[b * global_ids : (b + 1) * global_ids] for b in range(self.batches_per_pass)]
        return batches

    def _pick(self, pid: Any, generator: torch.Generator) -> list[int]:
        """K indices of identity ``pid``: without replacement when it has at least K images."""
        indices = self.index_of_pid[pid]
        k = self.num_instances
        if len(indices) >= k:
            chosen = torch.randperm(len(indices), generator=generator)[:k]
        else:
            chosen = torch.randint(len(indices), (k,), generator=generator)
        return [indices[i] for i in chosen.tolist()]

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from batch

    def __len__(self) -> int:
        return self.num_batches * self.batch_size
