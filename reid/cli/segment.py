"""One-shot segmentation with a pair's attention and GrabCut: ``reid segment``.

Usage::

    reid segment --config FILE --weights CKPT [--pairs N] [--layer NAME] [--support-mask use|ignore]
        [--fg F] [--probable-fg P] [--bg B] [--iterations I] [--panels K] [--batch-size B]
        [--pascal5i ROOT --fold K] [KEY VALUE ...]

Given a support image with its mask and a query image of the same class, the similarity
attention of the pair on the query (support restricted to its masked region: the pixels outside
the mask are set to the mean colour before the pair is explained; ``--support-mask ignore`` uses
the whole support image, as the paper does) seeds GrabCut, which gives the query's mask
(:mod:`reid.explain.segment`). Scored against the query's true mask by the foreground IoU and the
FB-IoU (mean of foreground and background IoU), per method:

* ``attention+grabcut``: the method;
* ``attention``: the same map thresholded at ``--probable-fg``, without GrabCut;
* ``gradcam+grabcut``: the same pipeline seeded by dot-product Grad-CAM of the pair at the head
  map (a baseline that uses the model);
* ``box+grabcut`` and ``frame+grabcut``: GrabCut from a centred box and from the whole frame (no
  model).

Pairs: on the first target dataset of the config (the synthetic set, whose part masks are ground
truth; the person is the foreground), ``N`` supports spread over the query set, each with the
first gallery image of its identity from another camera as the query. With ``--pascal5i ROOT
--fold K``: ``N`` one-shot episodes of PASCAL-5i's fold ``K`` (Shaban et al., 2017), through the
same transform. Writes ``OUTPUT_DIR/segmentation/segmentation.json`` (per method the mean IoUs
with 95% bootstrap intervals, the paired difference of the method against each baseline, every
pair's values) and ``panels/`` for the first ``--panels`` pairs.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from reid.cli.common import (
    config_or_exit, engine_with_weights, layer_or_exit, new_parser, parse_with_overrides, releases_output_dirs,
)

logger = logging.getLogger("segment")

METHODS = ("attention+grabcut", "attention", "gradcam+grabcut", "box+grabcut", "frame+grabcut")
BASELINES = ("gradcam+grabcut", "box+grabcut", "frame+grabcut", "attention")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = new_parser("segment", __doc__, weights=True)
    parser.add_argument("--pairs", type=int, default=100, help="support-query pairs scored (N)")
    parser.add_argument("--layer", default=None, help="explained layer (default: TEST.EXPLAIN_LAYER, else the head map)")
    parser.add_argument("--support-mask", choices=("use", "ignore"), default="use",
                        help="restrict the support image to its mask (use) or not (ignore, as the paper)")
    parser.add_argument("--fg", type=float, default=0.75, help="definite-foreground threshold of the normalised map")
    parser.add_argument("--probable-fg", type=float, default=0.4, help="probable-foreground threshold")
    parser.add_argument("--bg", type=float, default=0.1, help="definite-background threshold")
    parser.add_argument("--iterations", type=int, default=5, help="GrabCut iterations")
    parser.add_argument("--panels", type=int, default=8, help="pairs drawn as PNG panels")
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per explanation batch")
    parser.add_argument("--pascal5i", metavar="ROOT", default=None, help="PASCAL-5i root instead of the config's dataset")
    parser.add_argument("--fold", type=int, default=0, help="PASCAL-5i fold (0-3)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("opts", nargs="*", help="KEY VALUE overrides")
    args = parse_with_overrides(parser, argv)
    if args.pairs < 1 or args.iterations < 1 or args.batch_size < 1 or args.panels < 0:
        parser.error("--pairs, --iterations and --batch-size must be positive, --panels non-negative")
    return args


@dataclass
class Pair:
    """A support image with its mask and a query image with its true mask (RGB uint8, bool)."""

    support_path: str
    support_mask: np.ndarray
    query_path: str
    query_mask: np.ndarray
    query_ignore: np.ndarray | None = None


def synthetic_pairs(query_set: Any, gallery_set: Any, count: int) -> list[Pair]:
    """Supports spread over the query set, each with its identity's first gallery image from another camera."""
    from reid.data.synthetic import load_mask, mask_path
    from reid.explain.dump import spread_indices

    q_items = list(query_set.data)
    g_items = list(gallery_set.data)
    pairs = []
    for index in spread_indices(len(q_items), count * 2):
        path, pid, camid = q_items[index][:3]
        match = next((g for g in g_items if g[1] == pid and g[2] != camid), None)
        if match is None:
            continue
        for image in (path, match[0]):
            if not os.path.isfile(mask_path(image)):
                raise SystemExit(
                    f"reid segment needs ground-truth masks: none for {image} (expected {mask_path(image)}); "
                    "use the synthetic set, or --pascal5i"
                )
        pairs.append(Pair(path, load_mask(path) > 0, match[0], load_mask(match[0]) > 0))
        if len(pairs) == count:
            break
    return pairs


def pascal_pairs(root: str, fold: int, count: int) -> list[Pair]:
    """``count`` one-shot episodes of PASCAL-5i (:mod:`reid.data.pascal5i`)."""
    from reid.data.pascal5i import Pascal5i

    data = Pascal5i(root, fold)
    pairs = []
    for episode in data.episodes(count, seed=0):
        pairs.append(Pair(episode.support_path, episode.support_mask, episode.query_path, episode.query_mask,
                          getattr(episode, "query_ignore", None)))
    return pairs


def network_input(transform: Any, path: str) -> torch.Tensor:
    from reid.data.base import read_image

    return transform(read_image(path))


def masked(inputs: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
    """The normalised input with the pixels outside ``mask`` at the mean colour (zero)."""
    height, width = inputs.shape[1:]
    small = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    return inputs * torch.from_numpy(small)[None].to(inputs.dtype)


def pair_maps(model: Any, layer: str | None, support: torch.Tensor, query: torch.Tensor) -> dict[str, np.ndarray]:
    """The query's raw maps ``(T, h, w)``: similarity attention (same identity) and dot-product Grad-CAM."""
    from reid.explain import explain_pair, explain_pair_features
    from reid.explain.baselines import dot_product_maps_features

    with torch.no_grad():
        fs, fq = model.forward_features(support), model.forward_features(query)
        if layer is None:
            _, attention = explain_pair_features(model.embed_features, fs, fq, same=True)
        else:
            _, attention = explain_pair(model, layer, support, query, same=True)
        _, gradcam = dot_product_maps_features(model.embed_features, fs, fq)
    return {"attention": attention.float().cpu().numpy(), "gradcam": gradcam.float().cpu().numpy()}


def score_pair(pair: Pair, maps: dict[str, np.ndarray], thresholds: Any, iterations: int) -> tuple[dict, dict]:
    """Every method's mask of the query and its (foreground IoU, FB-IoU)."""
    from reid.explain.segment import centred_box, grabcut_from_rect, grabcut_from_seeds, seeds_from_map, whole_frame
    from reid.metrics.segmentation import fb_iou, foreground_iou
    from reid.vis import load_image

    image = load_image(pair.query_path)
    size = image.shape[:2]
    if pair.query_mask.shape != size:
        raise SystemExit(f"the mask of {pair.query_path} is {pair.query_mask.shape}, the image {size}")
    attention_seeds = seeds_from_map(maps["attention"], size, thresholds)
    masks = {
        "attention+grabcut": grabcut_from_seeds(image, attention_seeds, iterations),
        # the map alone: the pixels seeded foreground (the probable-foreground threshold)
        "attention": np.isin(attention_seeds, (cv2.GC_FGD, cv2.GC_PR_FGD)),
        "gradcam+grabcut": grabcut_from_seeds(image, seeds_from_map(maps["gradcam"], size, thresholds), iterations),
        "box+grabcut": grabcut_from_rect(image, centred_box(*size), iterations),
        "frame+grabcut": grabcut_from_rect(image, whole_frame(*size), iterations),
    }
    scores = {
        name: (foreground_iou(mask, pair.query_mask, pair.query_ignore), fb_iou(mask, pair.query_mask, pair.query_ignore))
        for name, mask in masks.items()
    }
    return masks, scores


def draw_panel(path: str, pair: Pair, attention: np.ndarray, masks: dict[str, np.ndarray], scores: dict) -> None:
    from reid.explain.postprocess import normalize_maps
    from reid.vis import Tile, compose_panel, load_image, overlay_heatmap, save_image

    support, query = load_image(pair.support_path), load_image(pair.query_path)
    size = query.shape[:2]
    heat = cv2.resize(attention.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    heat = normalize_maps(torch.from_numpy(heat)[None])[0].numpy()

    def shown(mask: np.ndarray) -> np.ndarray:
        return np.where(mask[..., None], query, (query * 0.25).astype(np.uint8))

    outlined = support.copy()
    outlined[~pair.support_mask] = (outlined[~pair.support_mask] * 0.3).astype(np.uint8)
    tiles = [
        Tile(outlined, "support + mask"), Tile(overlay_heatmap(query, heat), "attention on query"),
        Tile(shown(masks["attention+grabcut"]), f"GrabCut IoU {scores['attention+grabcut'][0]:.2f}"),
        Tile(shown(masks["box+grabcut"]), f"box IoU {scores['box+grabcut'][0]:.2f}"),
        Tile(shown(pair.query_mask), "truth"),
    ]
    save_image(path, compose_panel(tiles, header=[os.path.basename(pair.query_path)]))


def summarize_methods(values: dict[str, list[tuple[float, float]]]) -> dict[str, Any]:
    """Means with 95% bootstrap intervals, and the method's paired difference against each baseline."""
    from reid.metrics.stats import bootstrap_interval, paired_comparison

    table: dict[str, Any] = {}
    for name, pairs in values.items():
        fg, fb = [v[0] for v in pairs], [v[1] for v in pairs]
        table[name] = {
            "iou": float(np.mean(fg)), "iou_interval": list(bootstrap_interval(fg)),
            "fb_iou": float(np.mean(fb)), "fb_iou_interval": list(bootstrap_interval(fb)),
        }
    method = dict(enumerate(v[0] for v in values["attention+grabcut"]))
    comparisons = {
        baseline: paired_comparison(method, dict(enumerate(v[0] for v in values[baseline])))
        for baseline in BASELINES
    }
    return {"methods": table, "iou_difference_vs": comparisons}


@releases_output_dirs
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    cfg = config_or_exit(args)
    from reid.explain.segment import SeedThresholds
    from reid.io import write_json

    try:
        thresholds = SeedThresholds(args.fg, args.probable_fg, args.bg)
    except ValueError as exc:
        raise SystemExit(f"reid segment: {exc}") from exc
    engine = engine_with_weights(cfg, args.weights, "segment", progress=not args.no_progress)
    model = engine.model.eval()
    if model.explainability.attribution:
        raise SystemExit(
            f"reid segment explains with similarity attention, which does not apply to {type(model).__name__}; "
            "train an embedding model (e.g. PCB)"
        )
    layer = args.layer or cfg.TEST.EXPLAIN_LAYER or None
    if layer is not None:
        layer_or_exit(model, layer, "--layer / TEST.EXPLAIN_LAYER")
    name = next(iter(engine.test_loader))
    loaders = engine.test_loader[name]
    transform = loaders["query"].dataset.transform
    if args.pascal5i:
        pairs = pascal_pairs(args.pascal5i, args.fold, args.pairs)
        source = f"PASCAL-5i fold {args.fold}"
    else:
        pairs = synthetic_pairs(loaders["query"].dataset, loaders["gallery"].dataset, args.pairs)
        source = name
    if not pairs:
        raise SystemExit("reid segment: no support-query pair found")
    out_dir = os.path.join(cfg.OUTPUT_DIR, "segmentation")
    values: dict[str, list[tuple[float, float]]] = {m: [] for m in METHODS}
    records = []
    for start in range(0, len(pairs), args.batch_size):
        chunk = pairs[start : start + args.batch_size]
        supports = torch.stack([
            masked(network_input(transform, p.support_path), p.support_mask) if args.support_mask == "use"
            else network_input(transform, p.support_path)
            for p in chunk
        ]).to(engine.device)
        queries = torch.stack([network_input(transform, p.query_path) for p in chunk]).to(engine.device)
        maps = pair_maps(model, layer, supports, queries)
        for t, pair in enumerate(chunk):
            one = {key: value[t] for key, value in maps.items()}
            masks, scores = score_pair(pair, one, thresholds, args.iterations)
            for method, score in scores.items():
                values[method].append(score)
            index = start + t
            record = {"support": pair.support_path, "query": pair.query_path,
                      **{m: {"iou": s[0], "fb_iou": s[1]} for m, s in scores.items()}}
            if index < args.panels:
                panel = os.path.join("panels", f"pair{index:04d}.png")
                draw_panel(os.path.join(out_dir, panel), pair, one["attention"], masks, scores)
                record["panel"] = panel
            records.append(record)
        logger.info("segmented %d of %d pairs", min(start + args.batch_size, len(pairs)), len(pairs))
    summary = {
        "source": source, "pairs": len(pairs), "layer": layer or model.explainability.head_layer,
        "support_mask": args.support_mask, "thresholds": vars(thresholds), "iterations": args.iterations,
        **summarize_methods(values),
    }
    write_json(os.path.join(out_dir, "segmentation.json"), {"summary": summary, "pairs": records})
    width = max(len(m) for m in METHODS)
    lines = [f"{'method'.ljust(width)}  IoU (95% interval)      FB-IoU (95% interval)"]
    for method, row in summary["methods"].items():
        lo, hi = row["iou_interval"]
        flo, fhi = row["fb_iou_interval"]
        lines.append(f"{method.ljust(width)}  {row['iou']:.3f} [{lo:.3f}, {hi:.3f}]   {row['fb_iou']:.3f} [{flo:.3f}, {fhi:.3f}]")
    logger.info("one-shot segmentation on %s, %d pairs, layer %s (table below; %s)", source, len(pairs),
                summary["layer"], os.path.join(out_dir, "segmentation.json"))
    print("\n".join(lines))
    return summary
