#!/usr/bin/env python
"""Pairs explained per second for a top-K dump: our head-only path against pytorch-grad-cam.

Workload: ``Q`` queries with ``K`` gallery images each (``Q x K`` pairs, ``Q (K + 1)`` distinct
images, random inputs, a random-weight PCB in eval mode), both maps of every pair wanted.

* **Ours** (what ``tools/explain.py`` does): each distinct image goes through the trunk once
  (``forward_features``, no gradient), then every pair is explained through the head only
  (``explain_pair_features``: pooling and normalisation, batched over pairs). Timed end to end,
  trunk included; the head-only part is printed too: in the tool the maps come from the ranking
  pass, so the head-only time is the whole extra cost of explaining.
* **Reference**: pytorch-grad-cam (PyPI ``grad-cam``), ``GradCAM`` on ``layer4`` with a custom
  target, one pair per call (both images of the pair in one batch), as a user would explain
  pairs with it today. The target of each image is the similarity to the other image of the
  pair, ``s = normalize(f) . f_other`` (the dot product of the L2-normalised embeddings, with
  ``f_other`` precomputed, as it is after ranking).

Agreement: our maps are recomputed for the *same score* as the reference (weights = the other
image's normalised embedding) and post-processed as grad-cam does (resized bilinearly to the
input, then min-max normalised: grad-cam's normalise-resize-normalise equals that because min-max
is affine-invariant); the largest absolute difference over all pairs is printed and checked
against ``--tolerance`` (exit status 1 when it is exceeded). The throughput of ours is measured
with the Siamese weights of the tool (``--same``) and with the dot-product score; both do the same
work.

Runs alternate (ours, grad-cam, ours, ...) after a one-pair warm-up so that a load change on a
shared machine hits both; medians are reported; the agreement uses the timed runs' maps.

Usage::

    python benchmarks/explain_throughput.py                         # resnet50, 256x128, 10 x top-10, CPU
    python benchmarks/explain_throughput.py --backbone resnet18 --height 128 --width 64 --threads 1
    python benchmarks/explain_throughput.py --gradcam-pairs 20      # time grad-cam on the first 20 pairs
"""

from __future__ import annotations

import argparse
import logging
import statistics
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F


from _timing import timed

from reid.explain import (
    attention_maps_from_features,
    explain_pair_features,
    normalize_maps,
    resize_maps,
)
from reid.models.pcb import PCB


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50", choices=["resnet18", "resnet34", "resnet50"])
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--stripes", type=int, default=6)
    parser.add_argument("--queries", type=int, default=10, help="Q")
    parser.add_argument("--topk", type=int, default=10, help="K, matches per query")
    parser.add_argument("--batch-size", type=int, default=32, help="images per trunk batch, pairs per head batch")
    parser.add_argument("--same", choices=("true", "false", "mixed"), default="mixed",
                        help="Siamese 'same' flags of our timed run (mixed: alternate)")
    parser.add_argument("--gradcam-pairs", type=int, default=0, help="pairs timed with grad-cam (0: all)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each method")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max |ours - grad-cam| on [0, 1] maps")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


class SimilarityTarget:
    """pytorch-grad-cam target: ``normalize(f) . reference`` for one sample's ``(D,)`` output."""

    def __init__(self, reference: torch.Tensor) -> None:
        self.reference = reference

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return (F.normalize(output, dim=0) * self.reference).sum()


@torch.no_grad()
def trunk_maps(model: PCB, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``(N, C, h, w)`` layer4 maps, one trunk pass per image."""
    return torch.cat([model.forward_features(chunk) for chunk in images.split(batch_size)])


def ours_siamese(
    model: PCB, images: torch.Tensor, pairs: torch.Tensor, same: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Trunk once per image, then Siamese maps of every pair through the head: ``(P, h, w)`` x 2."""
    maps = trunk_maps(model, images, batch_size)
    return head_siamese(model, maps, pairs, same, batch_size)


def head_siamese(
    model: PCB, maps: torch.Tensor, pairs: torch.Tensor, same: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Siamese maps of every pair from precomputed layer4 maps (head-only gradients)."""
    first, second = [], []
    with torch.no_grad():
        for chunk, same_chunk in zip(pairs.split(batch_size), same.split(batch_size)):
            m1, m2 = explain_pair_features(model.embed_features, maps[chunk[:, 0]], maps[chunk[:, 1]], same_chunk)
            first.append(m1)
            second.append(m2)
    return torch.cat(first), torch.cat(second)


def head_dot(
    model: PCB, maps: torch.Tensor, embeddings: torch.Tensor, pairs: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps of every pair for the dot-product score ``f_i . f_other`` (grad-cam's target)."""
    first, second = [], []
    with torch.no_grad():
        for chunk in pairs.split(batch_size):
            i, j = chunk[:, 0], chunk[:, 1]
            stacked = torch.cat([maps[i], maps[j]])
            weights = torch.cat([embeddings[j], embeddings[i]])
            raw, _ = attention_maps_from_features(model.embed_features, stacked, weights)
            m1, m2 = raw.split(len(chunk))
            first.append(m1)
            second.append(m2)
    return torch.cat(first), torch.cat(second)


def gradcam_pairs(
    cam: object, images: torch.Tensor, embeddings: torch.Tensor, pairs: torch.Tensor
) -> np.ndarray:
    """grad-cam, one pair per call: ``(P, 2, H, W)`` maps in [0, 1]."""
    out = []
    for i, j in pairs.tolist():
        batch = torch.stack([images[i], images[j]])
        out.append(cam(input_tensor=batch, targets=[SimilarityTarget(embeddings[j]), SimilarityTarget(embeddings[i])]))
    return np.stack(out)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        from pytorch_grad_cam import GradCAM
    except ImportError as err:
        raise SystemExit("pytorch-grad-cam is not installed: pip install grad-cam (see docs/benchmarks.md)") from err
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = PCB(num_classes=10, backbone=args.backbone, num_stripes=args.stripes, pretrained=False).to(device).eval()
    num_images = args.queries * (args.topk + 1)
    images = torch.randn(num_images, 3, args.height, args.width, device=device)
    # image q is a query (q < Q); its k-th match is image Q + q K + k
    pairs = torch.tensor(
        [(q, args.queries + q * args.topk + k) for q in range(args.queries) for k in range(args.topk)], device=device
    )
    if args.same == "mixed":
        same = torch.arange(len(pairs), device=device) % 2 == 0
    else:
        same = torch.full((len(pairs),), args.same == "true", device=device)
    with torch.no_grad():
        maps = trunk_maps(model, images, args.batch_size)
        embeddings = F.normalize(model.embed_features(maps), dim=1)
    timed_pairs = pairs[: args.gradcam_pairs] if args.gradcam_pairs > 0 else pairs

    outputs: dict[str, object] = {}

    def keep(name: str, step: Callable[[], object]) -> Callable[[], None]:
        return lambda: outputs.__setitem__(name, step())

    with GradCAM(model=model, target_layers=[model.layer4]) as cam:
        gradcam_pairs(cam, images, embeddings, pairs[:1])  # warm-up (the trunk ran above)
        head_dot(model, maps, embeddings, pairs[:1], args.batch_size)
        times: dict[str, list[float]] = {"ours": [], "ours_head": [], "ours_dot_head": [], "gradcam": []}
        for _ in range(args.repeats):
            times["ours"].append(timed(lambda: ours_siamese(model, images, pairs, same, args.batch_size), device))
            times["ours_head"].append(timed(lambda: head_siamese(model, maps, pairs, same, args.batch_size), device))
            times["ours_dot_head"].append(
                timed(keep("dot", lambda: head_dot(model, maps, embeddings, pairs, args.batch_size)), device)
            )
            times["gradcam"].append(
                timed(keep("gradcam", lambda: gradcam_pairs(cam, images, embeddings, timed_pairs)), device)
            )
    # agreement on the same score: ours post-processed as grad-cam (resize to the input, min-max)
    dot_q, dot_g = (m[: len(timed_pairs)] for m in outputs["dot"])
    ours = torch.stack([normalize_maps(resize_maps(m, (args.height, args.width))).cpu() for m in (dot_q, dot_g)], dim=1)
    difference = (ours - torch.from_numpy(outputs["gradcam"])).abs()
    median = {name: statistics.median(values) for name, values in times.items()}
    rate = {
        "ours": len(pairs) / median["ours"],
        "ours_head": len(pairs) / median["ours_head"],
        "ours_dot_head": len(pairs) / median["ours_dot_head"],
        "gradcam": len(timed_pairs) / median["gradcam"],
    }
    result = {
        **{f"{name}_pairs_per_s": value for name, value in rate.items()},
        "ratio": rate["ours"] / rate["gradcam"],
        "ratio_head_only": rate["ours_head"] / rate["gradcam"],
        "max_abs_diff": float(difference.max()),
        "mean_abs_diff": float(difference.mean()),
    }
    h, w = maps.shape[-2:]
    print(
        f"PCB {args.backbone} (random weights) {args.height}x{args.width}, layer4 map {h}x{w}, "
        f"{args.queries} queries x top-{args.topk} = {len(pairs)} pairs ({num_images} images), "
        f"device {device}, threads {torch.get_num_threads()}, median of {args.repeats}"
    )
    print(f"ours, trunk once per image + head-only maps : {rate['ours']:9.2f} pairs/s ({median['ours']:.2f} s)")
    print(
        f"ours, head-only part (maps from ranking)    : {rate['ours_head']:9.2f} pairs/s "
        f"({median['ours_head']:.3f} s)"
    )
    print(f"ours, head-only, dot-product score         : {rate['ours_dot_head']:9.2f} pairs/s")
    print(
        f"pytorch-grad-cam GradCAM, one pair per call: {rate['gradcam']:9.2f} pairs/s "
        f"({median['gradcam']:.2f} s for {len(timed_pairs)} pairs)"
    )
    print(f"ratio ours / grad-cam: {result['ratio']:.1f}x (head-only part: {result['ratio_head_only']:.0f}x)")
    agree = result["max_abs_diff"] <= args.tolerance
    print(
        f"map agreement, same score, {len(timed_pairs)} pairs x 2 maps at {args.height}x{args.width}: "
        f"max |diff| {result['max_abs_diff']:.2e}, mean {result['mean_abs_diff']:.2e} "
        f"({'agree' if agree else 'DISAGREE'} at tolerance {args.tolerance:g})"
    )
    if not agree:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
