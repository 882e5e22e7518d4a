"""One-shot segmentation with a pair's attention and GrabCut: ``reid segment``.

Usage::

    reid segment --config FILE --weights CKPT [--pairs N] [--ways 1|2] [--shots K] [--layer NAME]
        [--support-mask use|ignore]
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

**N-way K-shot** (SAM paper, section 4.3; :mod:`reid.explain.segment` states the rules): with
``--shots K`` the query's map for a class is the mean of its maps against the class's ``K``
supports; with ``--ways 2`` the query holds two classes, and each class's map is the triplet form
of similarity attention (the class's support the positive, the other class's the negative); each
class gets its own mask, and a pixel both claim goes to the class whose map is higher there. Every
class of every episode is scored; ``segmentation.json`` also holds, per method, each class's IoU
over all its episodes (summed intersections over summed unions, Shaban et al.'s protocol) and
their mean, the mean-IoU of the paper's tables.

Pairs: on the first target dataset of the config (the synthetic set, whose part masks are ground
truth; the person is the foreground), ``N`` supports spread over the query set, each with the
first gallery image of its identity from another camera as the query. With ``--pascal5i ROOT
--fold K``: ``N`` one-shot episodes of PASCAL-5i's fold ``K`` (Shaban et al., 2017), through the
same transform. 2-way on the synthetic set: the classes ``person`` and ``bag`` of the rendered
people (queries whose bag shows); on PASCAL-5i: two of the fold's classes that one image holds. Writes ``OUTPUT_DIR/segmentation/segmentation.json`` (per method the mean IoUs
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
    parser.add_argument("--pairs", type=int, default=100, help="episodes scored (support-query pairs for 1-way 1-shot)")
    parser.add_argument("--ways", type=int, choices=(1, 2), default=1,
                        help="classes per query: 1, or 2 (the triplet form: the other class's support is the negative)")
    parser.add_argument("--shots", type=int, default=1, help="supports per class (K; the paper uses 1 and 5)")
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
    if args.pairs < 1 or args.iterations < 1 or args.batch_size < 1 or args.panels < 0 or args.shots < 1:
        parser.error("--pairs, --shots, --iterations and --batch-size must be positive, --panels non-negative")
    return args


@dataclass
class ClassTask:
    """One class of an episode: its name, its true mask in the query, and its ``K`` supports
    (``(path, mask)``)."""

    name: str
    query_mask: np.ndarray
    supports: list[tuple[str, np.ndarray]]


@dataclass
class Task:
    """An N-way K-shot episode: a query image and its classes (one for 1-way)."""

    query_path: str
    classes: list[ClassTask]
    query_ignore: np.ndarray | None = None


PERSON = "person"
BAG = "bag"
MIN_BAG_FRACTION = 0.01
"""The fraction of a synthetic image its bag must cover for the image to hold the class ``bag``
(2-way; ours)."""


def _person_and_bag(path: str) -> dict[str, np.ndarray]:
    from reid.data.render import PART_LABELS
    from reid.data.synthetic import load_mask

    labels = load_mask(path)
    bag = labels == PART_LABELS["bag"]
    return {PERSON: (labels > 0) & ~bag, BAG: bag}


def _require_masks(paths: list[str]) -> None:
    from reid.data.synthetic import mask_path

    for image in paths:
        if not os.path.isfile(mask_path(image)):
            raise SystemExit(
                f"reid segment needs ground-truth masks: none for {image} (expected {mask_path(image)}); "
                "use the synthetic set, or --pascal5i"
            )


def synthetic_tasks(query_set: Any, gallery_set: Any, count: int, ways: int = 1, shots: int = 1) -> list[Task]:
    """Episodes on the synthetic set (its part masks are the ground truth).

    1-way (the person is the class): supports spread over the query set, each with the first
    gallery image of its identity from another camera as the query; ``K`` shots add further
    images of that identity (query and gallery sets, the query excluded) as supports.

    2-way (the synthetic analogue of an image holding two classes): the classes ``person``
    (every part but the bag) and ``bag``. The queries are gallery images whose bag shows
    (``MIN_BAG_FRACTION`` of the image), spread over the gallery; each class's ``K`` supports are
    images of other identities (query and gallery sets; for ``bag``, with the bag showing), taken in
    turn.
    """
    from reid.data.synthetic import load_mask
    from reid.explain.ranking import spread_indices

    q_items = list(query_set.data)
    g_items = list(gallery_set.data)
    tasks: list[Task] = []
    if ways == 1:
        for index in spread_indices(len(q_items), count * 2):
            path, pid, camid = q_items[index][:3]
            match = next((g for g in g_items if g[1] == pid and g[2] != camid), None)
            if match is None:
                continue
            more = [item[0] for item in q_items + g_items if item[1] == pid and item[0] not in (path, match[0])]
            supports = [path, *more][:shots]
            if len(supports) < shots:
                continue
            _require_masks([*supports, match[0]])
            tasks.append(Task(match[0], [ClassTask(
                PERSON, load_mask(match[0]) > 0, [(s, load_mask(s) > 0) for s in supports],
            )]))
            if len(tasks) == count:
                break
        return tasks
    _require_masks([g_items[0][0], q_items[0][0]])
    def shows_bag(path: str) -> bool:
        bag = _person_and_bag(path)[BAG]
        return bag.mean() >= MIN_BAG_FRACTION

    with_bag = [g for g in g_items if shows_bag(g[0])]
    every = q_items + g_items
    pools = {PERSON: every, BAG: [item for item in every if shows_bag(item[0])]}
    turn = {PERSON: 0, BAG: 0}
    for index in spread_indices(len(with_bag), count):
        query, pid = with_bag[index][0], with_bag[index][1]
        truth = _person_and_bag(query)
        classes = []
        for name in (PERSON, BAG):
            pool = [item for item in pools[name] if item[1] != pid]
            if len(pool) < shots:
                raise SystemExit(f"reid segment: fewer than {shots} support images hold the class {name!r}")
            chosen = [pool[(turn[name] + k) % len(pool)][0] for k in range(shots)]
            turn[name] += shots
            classes.append(ClassTask(name, truth[name], [(s, _person_and_bag(s)[name]) for s in chosen]))
        tasks.append(Task(query, classes))
    return tasks


def pascal_tasks(root: str, fold: int, count: int, ways: int = 1, shots: int = 1) -> list[Task]:
    """``count`` episodes of PASCAL-5i's fold (:mod:`reid.data.pascal5i`): 1-way 1-shot episodes
    of :meth:`~reid.data.pascal5i.Pascal5i.episodes`, N-way K-shot ones of
    :meth:`~reid.data.pascal5i.Pascal5i.few_shot_episode`, seed 0, deterministic per fold."""
    from reid.data.pascal5i import Pascal5i

    data = Pascal5i(root, fold)
    if ways == 1 and shots == 1:
        return [
            Task(e.query_path, [ClassTask(e.class_name, e.query_mask, [(e.support_path, e.support_mask)])],
                 e.query_ignore)
            for e in data.episodes(count, seed=0)
        ]
    tasks = []
    for index in range(count):
        e = data.few_shot_episode(index, seed=0, ways=ways, shots=shots)
        tasks.append(Task(e.query_image, [
            ClassTask(name, mask, list(supports))
            for name, mask, supports in zip(e.class_names, e.query_masks, e.supports)
        ], e.query_ignore))
    return tasks


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


def triplet_maps(model: Any, layer: str | None, query: torch.Tensor, positive: torch.Tensor,
                 negative: torch.Tensor) -> dict[str, np.ndarray]:
    """The query's raw maps ``(T, h, w)`` of the triplets (query, positive, negative): similarity
    attention in its triplet form ("why is the query like the positive but not the negative", SAM
    paper section 4.3), and dot-product Grad-CAM of the (positive, query) pair (the baseline sees
    no negative)."""
    from reid.explain import explain_triplet, explain_triplet_features
    from reid.explain.baselines import dot_product_maps_features

    with torch.no_grad():
        fq, fp, fn = model.forward_features(query), model.forward_features(positive), model.forward_features(negative)
        if layer is None:
            attention, _, _ = explain_triplet_features(model.embed_features, fq, fp, fn)
        else:
            attention, _, _ = explain_triplet(model, layer, query, positive, negative)
        _, gradcam = dot_product_maps_features(model.embed_features, fp, fq)
    return {"attention": attention.float().cpu().numpy(), "gradcam": gradcam.float().cpu().numpy()}


def task_maps(model: Any, layer: str | None, tasks: list[Task], transform: Any, support_mask: bool,
              device: torch.device) -> list[list[dict[str, np.ndarray]]]:
    """Per task, per class, the query's combined maps (``attention``, ``gradcam``; ``(h, w)``):
    one row per shot, the ``K`` rows combined by :func:`reid.explain.segment.combine_shots`. One
    batch for every row of ``tasks``."""
    from reid.explain.segment import combine_shots

    def support_input(path: str, mask: np.ndarray) -> torch.Tensor:
        inputs = network_input(transform, path)
        return masked(inputs, mask) if support_mask else inputs

    rows: list[tuple[int, int]] = []
    queries, positives, negatives = [], [], []
    for t, task in enumerate(tasks):
        query = network_input(transform, task.query_path)
        for c, cls in enumerate(task.classes):
            other = task.classes[(c + 1) % len(task.classes)] if len(task.classes) > 1 else None
            for k, (path, mask) in enumerate(cls.supports):
                rows.append((t, c))
                queries.append(query)
                positives.append(support_input(path, mask))
                if other is not None:
                    negatives.append(support_input(*other.supports[k]))
    query_batch, positive_batch = torch.stack(queries).to(device), torch.stack(positives).to(device)
    if negatives:
        maps = triplet_maps(model, layer, query_batch, positive_batch, torch.stack(negatives).to(device))
    else:
        maps = pair_maps(model, layer, positive_batch, query_batch)
    out: list[list[dict[str, np.ndarray]]] = [[{} for _ in task.classes] for task in tasks]
    for t, task in enumerate(tasks):
        for c in range(len(task.classes)):
            picked = [i for i, row in enumerate(rows) if row == (t, c)]
            out[t][c] = {name: combine_shots(values[picked]) for name, values in maps.items()}
    return out


def score_task(task: Task, maps: list[dict[str, np.ndarray]], thresholds: Any, iterations: int) -> tuple[list, list]:
    """Every method's mask of each class of the query (a pixel given to at most one class:
    :func:`reid.explain.segment.exclusive_masks`) and, per class, its (foreground IoU, FB-IoU)
    and overlap counts."""
    from reid.explain.segment import (
        centred_box, exclusive_masks, grabcut_from_rect, grabcut_from_seeds, normalised_map, seeds_from_map,
        whole_frame,
    )
    from reid.metrics.segmentation import fb_iou, foreground_iou, overlap_counts
    from reid.vis import load_image

    image = load_image(task.query_path)
    size = image.shape[:2]
    for cls in task.classes:
        if cls.query_mask.shape != size:
            raise SystemExit(f"the mask of {task.query_path} is {cls.query_mask.shape}, the image {size}")
    per_class: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    for one in maps:
        attention_seeds = seeds_from_map(one["attention"], size, thresholds)
        per_class["attention+grabcut"].append(grabcut_from_seeds(image, attention_seeds, iterations))
        # the map alone: the pixels seeded foreground (the probable-foreground threshold)
        per_class["attention"].append(np.isin(attention_seeds, (cv2.GC_FGD, cv2.GC_PR_FGD)))
        per_class["gradcam+grabcut"].append(
            grabcut_from_seeds(image, seeds_from_map(one["gradcam"], size, thresholds), iterations))
    box = grabcut_from_rect(image, centred_box(*size), iterations)
    frame = grabcut_from_rect(image, whole_frame(*size), iterations)
    per_class["box+grabcut"] = [box] * len(maps)
    per_class["frame+grabcut"] = [frame] * len(maps)
    ranked = {
        "attention": np.stack([normalised_map(one["attention"], size) for one in maps]),
        "gradcam": np.stack([normalised_map(one["gradcam"], size) for one in maps]),
    }
    masks: list[dict[str, np.ndarray]] = [{} for _ in maps]
    for method, stack in per_class.items():
        source = {"gradcam+grabcut": "gradcam", "box+grabcut": None, "frame+grabcut": None}.get(method, "attention")
        kept = exclusive_masks(np.stack(stack), None if source is None else ranked[source])
        for c in range(len(maps)):
            masks[c][method] = kept[c]
    scores = []
    for c, cls in enumerate(task.classes):
        scores.append({
            method: (foreground_iou(mask, cls.query_mask, task.query_ignore), fb_iou(mask, cls.query_mask, task.query_ignore),
                     overlap_counts(mask, cls.query_mask, task.query_ignore))
            for method, mask in masks[c].items()
        })
    return masks, scores


def draw_panel(path: str, task: Task, c: int, attention: np.ndarray, masks: dict[str, np.ndarray], scores: dict) -> None:
    """The panel of class ``c`` of a task: its first support with its mask, the attention on the
    query, the method's and the box baseline's masks, the truth."""
    from reid.explain.postprocess import normalize_maps
    from reid.vis import Tile, compose_panel, load_image, overlay_heatmap, save_image

    cls = task.classes[c]
    support_path, support_mask = cls.supports[0]
    support, query = load_image(support_path), load_image(task.query_path)
    size = query.shape[:2]
    heat = cv2.resize(attention.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    heat = normalize_maps(torch.from_numpy(heat)[None])[0].numpy()

    def shown(mask: np.ndarray) -> np.ndarray:
        return np.where(mask[..., None], query, (query * 0.25).astype(np.uint8))

    outlined = support.copy()
    outlined[~support_mask] = (outlined[~support_mask] * 0.3).astype(np.uint8)
    tiles = [
        Tile(outlined, f"support ({cls.name})" if len(task.classes) > 1 else "support + mask"),
        Tile(overlay_heatmap(query, heat), "attention on query"),
        Tile(shown(masks["attention+grabcut"]), f"GrabCut IoU {scores['attention+grabcut'][0]:.2f}"),
        Tile(shown(masks["box+grabcut"]), f"box IoU {scores['box+grabcut'][0]:.2f}"),
        Tile(shown(cls.query_mask), "truth"),
    ]
    save_image(path, compose_panel(tiles, header=[os.path.basename(task.query_path)]))


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


def class_table(counts: dict[str, dict[str, list]]) -> dict[str, Any]:
    """Per method: each class's IoU over all its episodes (summed intersections over summed unions,
    Shaban et al.'s protocol, also for the FB-IoU), and the mean over the classes (the mean-IoU of
    the paper's tables 4 and 5)."""
    table = {}
    for method, by_class in counts.items():
        rows = {}
        for name, items in by_class.items():
            fi, fu, bi, bu = (sum(c[k] for c in items) for k in range(4))
            fg = fi / fu if fu else 1.0
            rows[name] = {"iou": fg, "fb_iou": 0.5 * (fg + (bi / bu if bu else 1.0)), "episodes": len(items)}
        table[method] = {
            "per_class": rows,
            "mean_iou": float(np.mean([r["iou"] for r in rows.values()])),
            "mean_fb_iou": float(np.mean([r["fb_iou"] for r in rows.values()])),
        }
    return table


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
        tasks = pascal_tasks(args.pascal5i, args.fold, args.pairs, args.ways, args.shots)
        source = f"PASCAL-5i fold {args.fold}"
    else:
        tasks = synthetic_tasks(loaders["query"].dataset, loaders["gallery"].dataset, args.pairs, args.ways, args.shots)
        source = name
    if not tasks:
        raise SystemExit("reid segment: no episode found")
    out_dir = os.path.join(cfg.OUTPUT_DIR, "segmentation")
    values: dict[str, list[tuple[float, float]]] = {m: [] for m in METHODS}
    counts: dict[str, dict[str, list]] = {m: {} for m in METHODS}
    records = []
    per_batch = max(1, args.batch_size // (args.ways * args.shots))
    for start in range(0, len(tasks), per_batch):
        chunk = tasks[start : start + per_batch]
        maps = task_maps(model, layer, chunk, transform, args.support_mask == "use", engine.device)
        for t, task in enumerate(chunk):
            masks, scores = score_task(task, maps[t], thresholds, args.iterations)
            index = start + t
            for c, cls in enumerate(task.classes):
                for method, score in scores[c].items():
                    values[method].append(score[:2])
                    counts[method].setdefault(cls.name, []).append(score[2])
                record = {"support": cls.supports[0][0], "supports": [s for s, _ in cls.supports],
                          "query": task.query_path, "class": cls.name,
                          **{m: {"iou": v[0], "fb_iou": v[1]} for m, v in scores[c].items()}}
                if index < args.panels:
                    suffix = "" if args.ways == 1 else f"_{cls.name}"
                    panel = os.path.join("panels", f"pair{index:04d}{suffix}.png")
                    draw_panel(os.path.join(out_dir, panel), task, c, maps[t][c]["attention"], masks[c], scores[c])
                    record["panel"] = panel
                records.append(record)
        logger.info("segmented %d of %d episodes", min(start + per_batch, len(tasks)), len(tasks))
    summary = {
        "source": source, "ways": args.ways, "shots": args.shots, "pairs": len(tasks),
        "layer": layer or model.explainability.head_layer,
        "support_mask": args.support_mask, "thresholds": vars(thresholds), "iterations": args.iterations,
        **summarize_methods(values), "classes": class_table(counts),
    }
    os.makedirs(out_dir, exist_ok=True)  # no panel may have created it (--panels 0)
    write_json(os.path.join(out_dir, "segmentation.json"), {"summary": summary, "pairs": records})
    width = max(len(m) for m in METHODS)
    lines = [f"{'method'.ljust(width)}  IoU (95% interval)      FB-IoU (95% interval)   mean-IoU over classes"]
    for method, row in summary["methods"].items():
        lo, hi = row["iou_interval"]
        flo, fhi = row["fb_iou_interval"]
        lines.append(f"{method.ljust(width)}  {row['iou']:.3f} [{lo:.3f}, {hi:.3f}]   {row['fb_iou']:.3f} [{flo:.3f}, "
                     f"{fhi:.3f}]   {summary['classes'][method]['mean_iou']:.3f}")
    logger.info("%d-way %d-shot segmentation on %s, %d episodes, layer %s (table below; %s)", args.ways, args.shots,
                source, len(tasks), summary["layer"], os.path.join(out_dir, "segmentation.json"))
    print("\n".join(lines))
    return summary
