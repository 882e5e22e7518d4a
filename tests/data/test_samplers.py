"""DistributedIdentitySampler: P x K per process, each identity once per epoch across processes."""

from collections import Counter

import pytest
import torch

from reid.data.samplers import DistributedIdentitySampler


def make_items(images_per_id):
    """torchreid-style train items ``(path, pid, camid, dsetid)``; identity ``p`` has
    ``images_per_id[p]`` images."""
    items = []
    for pid, count in enumerate(images_per_id):
        items += [(f"img_{pid}_{i}.png", pid, i % 2, 0) for i in range(count)]
    return items


def samplers(items, world, batch_size, k, seed=0, epoch=0):
    out = [DistributedIdentitySampler(items, batch_size, k, num_replicas=world, rank=r, seed=seed)
           for r in range(world)]
    for sampler in out:
        sampler.set_epoch(epoch)
    return out


def pids_of(items, batch, k):
    """The identity of each group of K consecutive indices; fails if a group mixes identities."""
    groups = [batch[i : i + k] for i in range(0, len(batch), k)]
    pids = []
    for group in groups:
        owners = {items[i][1] for i in group}
        assert len(owners) == 1, f"a group of K images mixes identities {owners}"
        pids.append(owners.pop())
    return pids


# Identities 0..11; 3, 7 and 10 have fewer than K = 3 images.
IMAGES = [5, 4, 3, 2, 6, 3, 3, 1, 4, 5, 2, 3]


@pytest.mark.parametrize("epoch", [0, 1, 5])
def test_each_identity_once_per_epoch_across_ranks_with_k_images(epoch):
    items, world, k, batch_size = make_items(IMAGES), 3, 3, 6  # P = 2 per rank, 6 per global batch
    per_rank = [s.batches() for s in samplers(items, world, batch_size, k, epoch=epoch)]
    assert [len(b) for b in per_rank] == [2, 2, 2]  # 12 identities / 6 per global batch
    seen = Counter()
    for step in range(2):
        step_pids = []
        for rank in range(world):
            batch = per_rank[rank][step]
            assert len(batch) == batch_size
            pids = pids_of(items, batch, k)
            assert len(pids) == batch_size // k
            step_pids += pids
            for g, pid in enumerate(pids):
                group = batch[g * k : (g + 1) * k]
                if IMAGES[pid] >= k:  # distinct images when the identity has enough
                    assert len(set(group)) == k
        assert len(set(step_pids)) == len(step_pids)  # no identity on two ranks in one step
        seen.update(step_pids)
    assert seen == Counter(range(len(IMAGES)))  # every identity exactly once


def test_iteration_and_length_agree_with_batches_and_the_dataloader():
    items = make_items(IMAGES)
    (sampler,) = samplers(items, 1, 4, 2, epoch=2)
    flat = list(sampler)
    assert len(flat) == len(sampler) == 12 * 2
    assert flat == [i for batch in sampler.batches() for i in batch]
    loader = torch.utils.data.DataLoader(range(len(items)), sampler=sampler, batch_size=4, drop_last=True)
    assert [b.tolist() for b in loader] == sampler.batches()


def test_order_depends_on_seed_plus_epoch_only():
    items = make_items(IMAGES)
    a = samplers(items, 2, 4, 2, seed=10, epoch=0)[1].batches()
    b = samplers(items, 2, 4, 2, seed=10, epoch=0)[1].batches()
    c = samplers(items, 2, 4, 2, seed=10, epoch=1)[1].batches()
    d = samplers(items, 2, 4, 2, seed=9, epoch=1)[1].batches()
    e = samplers(items, 2, 4, 2, seed=9, epoch=2)[1].batches()
    assert a == b
    assert a != c
    assert a == d  # 10 + 0 == 9 + 1
    assert c == e  # 10 + 1 == 9 + 2


def test_uneven_identities_pad_the_last_batch_and_cover_all():
    counts = IMAGES + [4]  # 13 identities, 6 per global batch: 3 steps, 5 identities repeated
    items = make_items(counts)
    per_rank = [s.batches() for s in samplers(items, 3, 6, 3)]
    assert [len(b) for b in per_rank] == [3, 3, 3]
    seen = Counter()
    for step in range(3):
        step_pids = [pid for rank in range(3) for pid in pids_of(items, per_rank[rank][step], 3)]
        assert len(set(step_pids)) == len(step_pids)
        seen.update(step_pids)
    assert set(seen) == set(range(13))
    assert sum(seen.values()) == 18
    assert sorted(seen.values()).count(2) == 5


def test_bad_arguments_are_refused():
    items = make_items(IMAGES)
    with pytest.raises(ValueError, match="multiple of num_instances"):
        DistributedIdentitySampler(items, 5, 2)
    with pytest.raises(ValueError, match="rank must be in"):
        DistributedIdentitySampler(items, 4, 2, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="12 identities cannot fill one global batch of 16"):
        DistributedIdentitySampler(items, 8, 2, num_replicas=4)


def test_several_passes_cover_each_identity_once_per_pass():
    items = make_items(IMAGES + [4])  # 13 identities, 3 global batches of 6 per pass
    per_rank = [s.batches() for s in
                [DistributedIdentitySampler(items, 6, 3, num_replicas=3, rank=r, passes=2) for r in range(3)]]
    assert [len(b) for b in per_rank] == [6, 6, 6]
    for first in (0, 3):  # each pass: every identity, 5 repeated to fill its last batch
        seen = Counter()
        for step in range(first, first + 3):
            step_pids = [pid for rank in range(3) for pid in pids_of(items, per_rank[rank][step], 3)]
            assert len(set(step_pids)) == len(step_pids)
            seen.update(step_pids)
        assert set(seen) == set(range(13)) and sum(seen.values()) == 18
    with pytest.raises(ValueError, match="passes must be >= 1"):
        DistributedIdentitySampler(items, 6, 3, passes=0)
