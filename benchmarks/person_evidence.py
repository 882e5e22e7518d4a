#!/usr/bin/env python
"""Does a model's match rest on the person, and do its similarity-attention maps show it?

Synthetic set only (it needs the ground-truth person masks). For each ``--run
NAME=CONFIG:CHECKPOINT`` of a model with a head-only path (PCB: ``forward_features`` and
``embed_features``), on the config's test split:

1. **Reliance on the person.** Rank-1 and mAP (``reid.metrics.evaluate``, the model's own
   distance) with the images intact (the named reference, same run) and with every pixel outside
   the person mask set to the normalisation mean (zero after normalisation), in query and gallery
   alike. A model that matches on the person keeps its accuracy without the background.
2. **Map mass on the person.** The Siamese similarity attention (``reid.explain``, head-only, as
   ``tools/explain.py`` computes it) of ground-truth positive pairs from different cameras, the
   gallery image's map: the mean fraction of raw map mass inside the person mask (the measure of
   ``tools/explain.py``'s summary), intact and without the background. Two references: the
   person's area fraction (what a uniform map gets) and the *ceiling at the map's resolution*
   (the person mask itself area-pooled to the map's ``h x w``: the most a map of that size can put
   on the person after the bilinear resize).
3. **Locality.** Each gallery image pasted at the left, middle and right third of a blank canvas
   three times as wide (the normalisation mean); the mean share of the map's mass inside the third
   that holds the image. A map that ignores where the person is gives 1/3.
4. **The explained layer.** When the config sets ``TEST.EXPLAIN_LAYER`` (the layer that
   ``tools/explain.py`` shows), the mass inside the person of the same pairs' Siamese maps at that
   layer, on the full model.

Usage::

    python benchmarks/person_evidence.py \\
        --run pcb=configs/synthetic_pcb.yaml:output/synthetic_accuracy/pcb/checkpoints/checkpoint_last.pth \\
        --run pcb_sam=configs/synthetic_pcb_sam.yaml:output/synthetic_pcb_sam/checkpoints/checkpoint_last.pth
    python benchmarks/person_evidence.py --run pcb=...:... --num-pairs 100   # quicker
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm


from reid.data.synthetic import load_mask, mask_path
from reid.explain import attention_maps_from_features, explain_pair, pair_weights, resize_maps
from reid.metrics import evaluate
from reid.cli.common import config_or_exit, engine_with_weights, parse_run, parse_with_overrides
from reid.explain.dump import person_energy



def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=parse_run, action="append", required=True,
                        help="NAME=CONFIG:CHECKPOINT (repeat for each model)")
    parser.add_argument("--num-pairs", type=int, default=300,
                        help="positive cross-camera pairs whose maps are measured (spread over the queries)")
    parser.add_argument("--output-root", default="output/person_evidence", help="each run logs to <root>/<NAME>")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument("opts", nargs="*", help="KEY VALUE overrides for every run")
    args = parse_with_overrides(parser, argv)
    if args.num_pairs < 1:
        parser.error("--num-pairs must be >= 1")
    return args


@dataclass
class Split:
    """One side of the test split after the trunk pass (intact and without background)."""

    maps: torch.Tensor  # (N, C, h, w) layer4 maps of the intact images
    maps_person_only: torch.Tensor  # the same with the background removed
    paths: list[str]
    pids: np.ndarray
    camids: np.ndarray


def person_masks(paths: list[str], size: tuple[int, int]) -> torch.Tensor:
    """``(N, 1, H, W)`` float person masks (labels > 0) resized bilinearly to the input size."""
    masks = []
    for path in paths:
        if not os.path.isfile(mask_path(path)):
            raise SystemExit(f"no ground-truth mask beside {path}: this benchmark needs the synthetic set")
        mask = torch.from_numpy((load_mask(path) > 0).astype(np.float32))[None, None]
        masks.append(F.interpolate(mask, size=size, mode="bilinear", align_corners=False)[0])
    return torch.stack(masks)


def encode_split(model: torch.nn.Module, loader, device: torch.device, progress: bool, desc: str) -> Split:
    """Layer4 maps of every image of ``loader``, intact and with the background set to zero."""
    intact, person_only, paths, pids, camids = [], [], [], [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        images = batch["img"]
        masks = person_masks(list(batch["impath"]), tuple(images.shape[2:]))
        with torch.no_grad():
            intact.append(model.forward_features(images.to(device)).float().cpu())
            person_only.append(model.forward_features((images * masks).to(device)).float().cpu())
        paths += list(batch["impath"])
        pids += [int(p) for p in batch["pid"]]
        camids += [int(c) for c in batch["camid"]]
    return Split(torch.cat(intact), torch.cat(person_only), paths, np.array(pids), np.array(camids))


def ranking(model, distances_of, query_maps, gallery_maps, query: Split, gallery: Split) -> tuple[float, float]:
    """Rank-1 and mAP of the maps' embeddings with the model's own distance."""
    with torch.no_grad():
        q = model.embed_features(query_maps).float()
        g = model.embed_features(gallery_maps).float()
    result = evaluate(distances_of(q, g), query.pids, gallery.pids, query.camids, gallery.camids)
    return float(result.cmc[0]), float(result.mAP)


def positive_pairs(query: Split, gallery: Split, count: int) -> tuple[list[int], list[int]]:
    """Up to ``count`` (query, gallery) pairs of one identity and different cameras, spread evenly."""
    pairs = [(qi, gi) for qi in range(len(query.paths)) for gi in range(len(gallery.paths))
             if query.pids[qi] == gallery.pids[gi] and query.camids[qi] != gallery.camids[gi]]
    if not pairs:
        raise SystemExit("no positive cross-camera pair in the test split")
    keep = np.unique(np.linspace(0, len(pairs) - 1, min(count, len(pairs))).round().astype(int))
    return [pairs[k][0] for k in keep], [pairs[k][1] for k in keep]


def mean_mass(maps: torch.Tensor, paths: list[str]) -> tuple[float, float]:
    """Mean mass fraction inside the person (all-zero maps skipped) and mean area fraction."""
    pairs = [person_energy(maps[k], paths[k]) for k in range(len(paths))]
    masses = [mass for mass, _ in pairs if mass is not None]
    return (float(np.mean(masses)) if masses else float("nan")), float(np.mean([area for _, area in pairs]))


def ceiling_fraction(person: torch.Tensor, size: tuple[int, int]) -> float:
    """Most map mass a ``size`` map can put inside ``person`` after the bilinear resize.

    The map is the ``(H, W)`` 0/1 mask area-pooled to ``size``; it is resized back bilinearly
    (``align_corners=False``, as ``tools/explain.py`` measures) and its mass inside the mask is
    returned as a fraction of its total.
    """
    pooled = F.adaptive_avg_pool2d(person[None, None].float(), size)[0]
    back = resize_maps(pooled, tuple(person.shape))[0].clamp(min=0)
    return float((back * person).sum() / back.sum().clamp(min=1e-12))


def resolution_ceiling(paths: list[str], size: tuple[int, int]) -> float:
    """Mean :func:`ceiling_fraction` of the images' person masks (labels > 0)."""
    return float(np.mean([ceiling_fraction(torch.from_numpy((load_mask(p) > 0).astype(np.float32)), size)
                          for p in paths]))


def third_share(maps: torch.Tensor, where: int) -> float:
    """Mean share of each ``(h, 3w)`` map's mass in column third ``where`` (all-zero maps skipped)."""
    columns = maps.sum(dim=1)
    third = columns.shape[1] // 3
    inside, total = columns[:, where * third:(where + 1) * third].sum(dim=1), columns.sum(dim=1)
    valid = total > 0
    return float((inside[valid] / total[valid]).mean()) if bool(valid.any()) else float("nan")


def maps_against(model, anchors: torch.Tensor, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Siamese maps ``(T, h, w')`` of ``images``' feature maps for positive pairs with ``anchors``.

    The two sides may differ in width (the locality test): the pair weights only need the
    ``(T, D)`` embeddings, and only ``images`` is explained.
    """
    out = []
    for start in range(0, len(anchors), batch):
        a, b = anchors[start:start + batch], images[start:start + batch]
        with torch.no_grad():
            fa = F.normalize(model.embed_features(a).float(), dim=1)
            fb = F.normalize(model.embed_features(b).float(), dim=1)
        maps, _ = attention_maps_from_features(model.embed_features, b, pair_weights(fa, fb, True))
        out.append(maps.detach().float())
    return torch.cat(out)


def locality(model, dataset, device: torch.device, anchors: torch.Tensor, gallery_index: list[int]) -> list[float]:
    """Share of the map's mass in the canvas third that holds the gallery image (left, middle, right)."""
    images = torch.stack([dataset[j]["img"] for j in gallery_index])
    height, width = images.shape[2:]
    shares = []
    for where in range(3):
        canvas = images.new_zeros(len(images), 3, height, 3 * width)  # zero = the normalisation mean
        canvas[..., where * width:(where + 1) * width] = images
        with torch.no_grad():
            wide = model.forward_features(canvas.to(device)).float().cpu()
        shares.append(third_share(maps_against(model, anchors, wide), where))
    return shares


def measure(name: str, config: str, weights: str, args: argparse.Namespace) -> dict[str, float]:
    cfg = config_or_exit(argparse.Namespace(config=config, opts=[*args.opts, "OUTPUT_DIR",
                                                                 os.path.join(args.output_root, name)]))
    engine = engine_with_weights(cfg, weights, "person_evidence", progress=args.progress)
    model = engine.model.eval()
    if model.explainability.attribution:
        raise SystemExit(
            f"{name}: {type(model).__name__} is explained by exact attribution, not by similarity attention "
            "through its head; this benchmark measures embedding models"
        )
    loaders = engine.test_loader[next(iter(engine.test_loader))]
    query = encode_split(model, loaders["query"], engine.device, args.progress, f"{name} query")
    gallery = encode_split(model, loaders["gallery"], engine.device, args.progress, f"{name} gallery")
    distances_of = engine.distance_matrix
    rank1, mean_ap = ranking(model, distances_of, query.maps, gallery.maps, query, gallery)
    rank1_p, mean_ap_p = ranking(model, distances_of, query.maps_person_only, gallery.maps_person_only, query, gallery)

    qi, gi = positive_pairs(query, gallery, args.num_pairs)
    paths = [gallery.paths[j] for j in gi]
    mass, area = mean_mass(maps_against(model, query.maps[qi], gallery.maps[gi]), paths)
    mass_p, _ = mean_mass(maps_against(model, query.maps_person_only[qi], gallery.maps_person_only[gi]), paths)
    ceiling = resolution_ceiling(paths, tuple(gallery.maps.shape[2:]))
    shares = locality(model, loaders["gallery"].dataset, engine.device, query.maps[qi], gi)
    result = {
        "rank1": rank1, "mAP": mean_ap, "rank1_person_only": rank1_p, "mAP_person_only": mean_ap_p,
        "pairs": len(qi), "mass": mass, "mass_person_only": mass_p, "area": area, "ceiling": ceiling,
        "map_size": "x".join(str(v) for v in gallery.maps.shape[2:]),
        "locality_left": shares[0], "locality_middle": shares[1], "locality_right": shares[2],
        "explain_layer": cfg.TEST.EXPLAIN_LAYER or None, "explain_layer_mass": None, "explain_layer_map_size": None,
    }
    if cfg.TEST.EXPLAIN_LAYER:
        maps = layer_maps(model, cfg.TEST.EXPLAIN_LAYER, loaders["query"].dataset, loaders["gallery"].dataset,
                          qi, gi, engine.device)
        result["explain_layer_mass"], _ = mean_mass(maps, paths)
        result["explain_layer_map_size"] = "x".join(str(v) for v in maps.shape[1:])
    return result


def layer_maps(model, layer: str, query_set, gallery_set, query_index: list[int], gallery_index: list[int],
               device: torch.device, batch: int = 32) -> torch.Tensor:
    """Siamese maps ``(T, h, w)`` of the gallery images at ``layer`` (the full model, as
    ``tools/explain.py`` explains ``TEST.EXPLAIN_LAYER``), for the positive pairs."""
    out = []
    for start in range(0, len(query_index), batch):
        qs, gs = query_index[start:start + batch], gallery_index[start:start + batch]
        first = torch.stack([query_set[i]["img"] for i in qs]).to(device)
        second = torch.stack([gallery_set[j]["img"] for j in gs]).to(device)
        with torch.no_grad():
            _, maps = explain_pair(model, layer, first, second, True)
        out.append(maps.detach().float().cpu())
    return torch.cat(out)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results = {name: measure(name, config, weights, args) for name, config, weights in args.run}
    print("reliance on the person (reference: intact images, same run)")
    print(f"{'model':<12}{'rank-1':>9}{'mAP':>8}{'rank-1 no bg':>14}{'mAP no bg':>11}")
    for name, r in results.items():
        print(f"{name:<12}{r['rank1']:>9.1%}{r['mAP']:>8.1%}{r['rank1_person_only']:>14.1%}{r['mAP_person_only']:>11.1%}")
    print("\nSiamese map mass inside the person, gallery image of positive cross-camera pairs")
    print(f"{'model':<12}{'pairs':>6}{'map':>6}{'intact':>8}{'no bg':>8}{'area':>7}{'ceiling':>9}"
          f"{'ratio':>7}")
    for name, r in results.items():
        print(f"{name:<12}{r['pairs']:>6}{r['map_size']:>6}{r['mass']:>8.3f}{r['mass_person_only']:>8.3f}"
              f"{r['area']:>7.3f}{r['ceiling']:>9.3f}{r['mass'] / r['area']:>6.2f}x")
    layered = {name: r for name, r in results.items() if r["explain_layer"]}
    if layered:
        print("\nthe same pairs at the config's TEST.EXPLAIN_LAYER (what tools/explain.py shows)")
        print(f"{'model':<12}{'layer':>8}{'map':>7}{'intact':>8}{'area':>7}{'ratio':>7}")
        for name, r in layered.items():
            print(f"{name:<12}{r['explain_layer']:>8}{r['explain_layer_map_size']:>7}{r['explain_layer_mass']:>8.3f}"
                  f"{r['area']:>7.3f}{r['explain_layer_mass'] / r['area']:>6.2f}x")
    print("\nlocality: map mass in the third of a 3x wide canvas that holds the image (1/3 = no locality)")
    print(f"{'model':<12}{'left':>8}{'middle':>8}{'right':>8}")
    for name, r in results.items():
        print(f"{name:<12}{r['locality_left']:>8.3f}{r['locality_middle']:>8.3f}{r['locality_right']:>8.3f}")
    return results


if __name__ == "__main__":
    main()
