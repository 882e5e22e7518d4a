#!/usr/bin/env python
"""Multi-seed study: rank-1, mAP and mINP of each demo arm on the synthetic set, paired by seed.

Arms (``--arms``; the default is every arm but ``torchreid_resnet18`` and ``avsl_margin``), each trained at the demo
budget on the same synthetic data with each ``--seeds`` value as ``SEED``:

* ``pcb``: ``configs/synthetic_pcb.yaml`` through ``reid train`` (PCB on an ImageNet-pretrained
  MobileNetV2, the weights of ``reid weights fetch mobilenet_v2``);
* ``pcb_sam``: ``configs/synthetic_pcb_sam.yaml`` (the same config plus similarity mining, the
  ``erase`` objective);
* ``pcb_sam_printed``: the same with ``SAM.OBJECTIVE printed`` (equation 2 as the SAM paper prints
  it: the ablation);
* ``avsl``: ``configs/synthetic_avsl.yaml`` (the same pretrained trunk, ProxyAnchor);
* ``avsl_margin``: the same config with ``AVSL.LOSS margin`` (the AVSL paper's other base loss, Wu et
  al.'s margin loss with distance-weighted sampling; not in the default arms);
* ``pcb_scratch``: ``configs/synthetic_pcb_scratch.yaml``, the earlier demo: ResNet-18 from
  random weights;
* ``torchreid_mobilenetv2``: the named reference. torchreid's own ``ImageTripletEngine`` (softmax +
  triplet) and its ``mobilenetv2_x1_0``, initialised with the same ImageNet weights as ours
  (renamed to its layout, :mod:`reid.models.imagenet_weights`), trained by torchreid's
  ``Engine.train`` epochs on the same data manager, sampler, input size, optimiser, learning rate,
  schedule and epochs as ``configs/synthetic_pcb.yaml``, then scored by the same evaluator as ours;
* ``torchreid_mobilenetv2_time``: the same reference at equal compute: as many epochs as fit in the
  training time of the same seed's ``pcb`` run (``train_seconds`` of its ``metrics.json``: the time
  in training steps, without evaluation), its learning-rate step moved in proportion;
* ``torchreid_resnet18``: the earlier reference (torchreid's ``resnet18``, random weights) at
  ``configs/synthetic_pcb_scratch.yaml``'s budget.

Pairing: a seed fixes the initial weights and the identity sampler's order. ``pcb`` and
``pcb_sam`` start from the same weights; once similarity mining draws its tuples (torch's RNG) the
augmentation draws of the two arms differ. Each run trains with ``TRAIN.DETERMINISTIC`` (the
default), so a seed reproduces its run on the same machine.

Variants (``--variant "NAME=ARM KEY VALUE ..."``) add arms: ``ARM``'s config with extra overrides,
e.g. ``--variant "pcb_sam_gamma1=pcb_sam SAM.GAMMA 1.0" --arms pcb pcb_sam_gamma1 --compare
pcb_sam_gamma1:pcb``, for a sweep at the same protocol (same seeds, same data).

Comparisons (``--compare A:B``; by default similarity mining against PCB under both objectives and
the two objectives against each other, AVSL against PCB, PCB against the from-scratch PCB and
against both torchreid references):
the mean paired difference over the seeds both arms have, its 95% Student-t and bootstrap
intervals, the wins and losses, and a verdict that says "no difference shown" when the t interval
holds 0 (:mod:`reid.metrics.stats`).

``--explanation-triplets N`` (0: off) also scores the explainers of every trained arm of ours on
N controlled triplets (``reid eval-explanations``, the same triplets for every run); the table
gives each explainer's mean over seeds with a two-level bootstrap interval (seeds, then images).

``--rescore-explanations`` scores the recorded runs' checkpoints again (same triplets) when the
explainers changed, keeping their accuracy records.

``--merge ROOT ...`` copies the runs that studies in other output roots recorded (same arm
settings only) before training, so that two studies can run side by side on disjoint seeds (one
process per core) and be gathered into one table.

The study resumes: ``<output-root>/study.json`` records every finished run; a new call skips
them and trains the rest (a killed study picks up at the run it was in, which restarts afresh).
A call whose arm settings (config file contents, overrides) differ from the recorded ones is
refused: use another ``--output-root``. Each call rewrites ``study.json`` and ``study.md`` (the
Markdown tables) after every run.

Usage::

    reid weights fetch mobilenet_v2                                  # once: the pretrained trunk
    python benchmarks/synthetic_accuracy.py                         # 5 seeds x 7 arms (hours on 2 cores)
    python benchmarks/synthetic_accuracy.py --arms pcb pcb_sam --seeds 0 1 2 3 4
    python benchmarks/synthetic_accuracy.py --explanation-triplets 60 --explanation-curves 24
    python benchmarks/synthetic_accuracy.py --arms avsl avsl_margin --seeds 0 1 2 --compare avsl_margin:avsl \
        --output-root output/avsl_margin_study NUM_THREADS 1 DATA.SOURCES "['synthetic_retrieval']"
    python benchmarks/synthetic_accuracy.py --seeds 0 1 OPTIM.MAX_EPOCH 1 DATA.SYNTHETIC.NUM_IDS 16 \\
        DATA.SYNTHETIC.IMAGES_PER_ID 6 DATA.HEIGHT 64 DATA.WIDTH 32 SAMPLER.BATCH_SIZE_TRAIN 8 \\
        SAMPLER.NUM_INSTANCES 2                              # a smoke run (a few minutes)
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import os
import sys
import time
from typing import Any, Callable

import numpy as np

from reid.metrics.stats import bootstrap_interval, paired_comparison, summarize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    "pcb": "configs/synthetic_pcb.yaml",
    "pcb_sam": "configs/synthetic_pcb_sam.yaml",
    "pcb_sam_printed": "configs/synthetic_pcb_sam.yaml",
    "avsl": "configs/synthetic_avsl.yaml",
    "avsl_margin": "configs/synthetic_avsl.yaml",
    "pcb_scratch": "configs/synthetic_pcb_scratch.yaml",
    "torchreid_mobilenetv2": "configs/synthetic_pcb.yaml",
    "torchreid_mobilenetv2_time": "configs/synthetic_pcb.yaml",
    "torchreid_resnet18": "configs/synthetic_pcb_scratch.yaml",
}
# Overrides that make an arm of its config (part of the arm's recorded settings).
ARM_OVERRIDES = {"pcb_sam_printed": ["SAM.OBJECTIVE", "printed"], "avsl_margin": ["AVSL.LOSS", "margin"]}
ARMS = tuple(CONFIGS)
DEFAULT_ARMS = tuple(arm for arm in ARMS if arm not in ("torchreid_resnet18", "avsl_margin"))
# Arms of torchreid's own engine (no explanations); the time-matched one and the arm whose
# training time it matches.
TORCHREID_ARMS = ("torchreid_mobilenetv2", "torchreid_mobilenetv2_time", "torchreid_resnet18")
TIME_MATCHED = {"torchreid_mobilenetv2_time": "pcb"}
DEFAULT_COMPARISONS = (
    "pcb_sam:pcb", "pcb_sam_printed:pcb", "pcb_sam:pcb_sam_printed", "avsl:pcb", "pcb:pcb_scratch",
    "pcb:torchreid_mobilenetv2", "pcb:torchreid_mobilenetv2_time",
)
METRICS = ("rank1", "rank5", "mAP", "mINP")
# Recorded when the runs evaluate a retrieval set (e.g. DATA.SOURCES "['synthetic_retrieval']").
RETRIEVAL_METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision", "nmi")
EXPLANATION_COLUMNS = ("pointing_game", "energy_inside", "deletion_auc", "insertion_auc")
PARTS = ("head", "torso", "legs", "shoes", "bag")
STUDY_FILE, TABLE_FILE = "study.json", "study.md"

logger = logging.getLogger("synthetic_accuracy")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from reid.cli.common import parse_with_overrides

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS),
                        help=f"arms to train: {', '.join(ARMS)} or a --variant's name")
    parser.add_argument("--variant", action="append", default=[], type=parse_variant, metavar='"NAME=ARM KEY VALUE ..."',
                        help="an extra arm: ARM with these overrides (e.g. \"pcb_sam_gamma1=pcb_sam SAM.GAMMA 1.0\")")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="SEED of each run")
    parser.add_argument("--compare", nargs="*", default=list(DEFAULT_COMPARISONS), metavar="A:B",
                        help="paired comparisons A minus B (arms of the study)")
    parser.add_argument("--output-root", default="output/synthetic_accuracy",
                        help="runs go to <root>/<arm>/seed<N>; the study to <root>/study.json and study.md")
    parser.add_argument("--explanation-triplets", type=int, default=0,
                        help="score the explainers of each run of ours on N controlled triplets (0: off)")
    parser.add_argument("--explanation-curves", type=int, default=24,
                        help="of those, the triplets with deletion/insertion curves")
    parser.add_argument("--rescore-explanations", action="store_true",
                        help="score the explanations of the recorded runs of --arms again (after the "
                             "explainers changed); their accuracy records are kept")
    parser.add_argument("--merge", nargs="+", default=[], metavar="ROOT",
                        help="first copy into this study the runs recorded by the studies in these output roots "
                             "(same arm settings only; e.g. two studies run side by side on disjoint seeds)")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: write the tables of the recorded (and --merge'd) runs")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument("opts", nargs="*", help="KEY VALUE overrides for every arm")
    args = parse_with_overrides(parser, argv)
    args.variants = dict(args.variant)
    known = (*ARMS, *args.variants)
    unknown = [arm for arm in args.arms if arm not in known]
    if unknown:
        parser.error(f"unknown arms {unknown}: choose from {', '.join(known)}")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must be distinct, got {args.seeds}")
    if args.explanation_triplets < 0 or args.explanation_curves < 0:
        parser.error("--explanation-triplets and --explanation-curves must be >= 0")
    for pair in args.compare:
        a, _, b = pair.partition(":")
        if a not in known or b not in known or a == b:
            parser.error(f"--compare takes A:B with two different arms of {', '.join(known)}, got {pair!r}")
    return args


def parse_variant(text: str) -> tuple[str, tuple[str, list[str]]]:
    """``"NAME=ARM KEY VALUE ..."`` -> ``(NAME, (ARM, [KEY, VALUE, ...]))``."""
    head, *opts = text.split()
    name, _, arm = head.partition("=")
    if not name or arm not in ARMS or name in ARMS:
        raise argparse.ArgumentTypeError(f"a variant is NAME=ARM KEY VALUE ... with a new NAME and ARM one of "
                                         f"{', '.join(ARMS)}, got {text!r}")
    if not opts or len(opts) % 2:
        raise argparse.ArgumentTypeError(f"a variant needs KEY VALUE overrides, got {text!r}")
    return name, (arm, opts)


# -- training one run ------------------------------------------------------------------------------


def train_ours(config: str, output_dir: str, seed: int, opts: list[str], progress: bool) -> dict[str, float]:
    """One run of ``reid train`` (afresh: an unfinished run in ``output_dir`` is moved aside)."""
    from reid.cli import train as train_tool

    argv = ["--config", config, "--overwrite", *([] if progress else ["--no-progress"]), *opts,
            "SEED", str(seed), "OUTPUT_DIR", output_dir]
    return train_tool.main(argv)


def time_matched_schedule(budget_seconds: float, first_epoch_seconds: float, max_epoch: int,
                          stepsize: int) -> tuple[int, int]:
    """``(epochs, lr step)`` of a time-matched run: as many whole epochs as the first one's time fits
    in the budget (at least one), and the learning-rate step at the config's fraction of the epochs
    (``stepsize / max_epoch``, rounded, at least after the first epoch)."""
    epochs = max(1, int(budget_seconds // first_epoch_seconds))
    return epochs, max(1, round(epochs * stepsize / max_epoch))


def train_torchreid(config: str, output_dir: str, seed: int, opts: list[str], progress: bool,
                    arch: str = "resnet18", budget_seconds: float | None = None) -> dict[str, float]:
    """torchreid's ``ImageTripletEngine`` with its ``arch`` at ``config``'s budget, scored by our
    evaluator (module docstring).

    Args:
        arch: ``resnet18`` (random weights) or ``mobilenetv2_x1_0`` (the ImageNet weights that
            ``reid weights fetch mobilenet_v2`` wrote, renamed to torchreid's layout).
        budget_seconds: train as many epochs as fit in this many seconds of training steps instead
            of ``OPTIM.MAX_EPOCH`` (the first epoch's time decides; at least one epoch), with the
            learning-rate step at the same fraction of the epochs as the config's.

    Returns:
        Our evaluator's metrics, plus ``train_seconds`` and ``epochs``.
    """
    import torch
    from torchreid.reid.engine import ImageTripletEngine
    from torchreid.reid.models import build_model
    from torchreid.reid.optim import build_lr_scheduler, build_optimizer

    from reid.builders import build_datamanager, resolve_device, seed_everything
    from reid.config import load_config
    from reid.engine.determinism import deterministic_algorithms
    from reid.engine.evaluation import EvalOptions, evaluate_targets, rank_features
    from reid.metrics.distance import compute_distance_matrix

    cfg = load_config(config, [*opts, "SEED", str(seed), "OUTPUT_DIR", output_dir])
    if cfg.OPTIM.SCHEDULER != "single_step" or cfg.OPTIM.NAME != "adam":
        raise SystemExit("the torchreid reference follows an adam + single_step config")
    if cfg.NUM_THREADS > 0:
        torch.set_num_threads(cfg.NUM_THREADS)
    device = resolve_device(cfg.DEVICE)
    seed_everything(seed)
    datamanager = build_datamanager(cfg, device)
    model = build_model(arch, datamanager.num_train_pids, loss="triplet", pretrained=False)
    if arch == "mobilenetv2_x1_0":
        from reid.models.imagenet_weights import prepare_torchreid_mobilenetv2
        from reid.models.trunks import find_pretrained_weights, missing_weights_message

        message = missing_weights_message("mobilenet_v2", cfg.MODEL.PRETRAINED_PATH)
        if message is not None:
            raise SystemExit(f"error: the torchreid reference needs the same weights as ours: {message}")
        state = torch.load(find_pretrained_weights("mobilenet_v2", cfg.MODEL.PRETRAINED_PATH), map_location="cpu",
                           weights_only=True)
        prepare_torchreid_mobilenetv2(model, state)
    model = model.to(device)
    optimizer = build_optimizer(model, optim="adam", lr=cfg.OPTIM.LR, weight_decay=cfg.OPTIM.WEIGHT_DECAY)
    scheduler = build_lr_scheduler(optimizer, lr_scheduler="single_step", stepsize=cfg.OPTIM.STEPSIZE[0],
                                   gamma=cfg.OPTIM.GAMMA)
    engine = ImageTripletEngine(
        datamanager, model, optimizer, margin=cfg.LOSS.TRIPLET_MARGIN, weight_t=cfg.LOSS.TRIPLET_WEIGHT,
        weight_x=cfg.LOSS.ID_WEIGHT, scheduler=scheduler, use_gpu=device.type == "cuda",
        label_smooth=cfg.LOSS.LABEL_SMOOTH > 0,
    )
    os.makedirs(output_dir, exist_ok=True)
    options = EvalOptions(dist_metric=cfg.TEST.DIST_METRIC, normalize_feature=cfg.TEST.NORMALIZE_FEATURE,
                          ranks=tuple(cfg.TEST.RANKS))

    def distances(query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        return compute_distance_matrix(query, gallery, options.dist_metric, normalize=options.normalize_feature)

    with deterministic_algorithms(cfg.TRAIN.DETERMINISTIC and device.type == "cpu"):
        # torchreid's own epoch (its loader loop, forward_backward and scheduler step), as its
        # Engine.run calls it; run's final test is left out (its Python evaluator needs 50+ gallery
        # images), our evaluator scores the model instead.
        epochs, trained, epoch = cfg.OPTIM.MAX_EPOCH, 0.0, 0
        engine.max_epoch = epochs
        while epoch < epochs:
            engine.epoch = epoch
            started = time.perf_counter()
            engine.train(print_freq=10_000)
            trained += time.perf_counter() - started
            epoch += 1
            if budget_seconds is not None and epoch == 1:
                epochs, scheduler.step_size = time_matched_schedule(
                    budget_seconds, trained, cfg.OPTIM.MAX_EPOCH, cfg.OPTIM.STEPSIZE[0])
                engine.max_epoch = epochs
                logger.info("%s: %.1f s budget, first epoch %.1f s: %d epochs, lr step after %d",
                            arch, budget_seconds, trained, epochs, scheduler.step_size)
        torch.save(model.state_dict(), os.path.join(output_dir, f"torchreid_{arch}.pth"))
        results, _ = evaluate_targets(model, datamanager.test_loader,
                                      lambda q, g: rank_features(q, g, options, distances), device, progress)
    if len(results) != 1:
        raise SystemExit(f"the torchreid reference scores one target, got {sorted(results)}")
    return {**next(iter(results.values())), "train_seconds": trained, "epochs": epochs}


def explain_run(config: str, run_dir: str, seed_opts: list[str], triplets: int, curves: int) -> dict[str, Any]:
    """``reid eval-explanations`` on a finished run's last checkpoint (triplets of seed 0 always)."""
    from reid.cli import eval_explanations

    weights = os.path.join(run_dir, "checkpoints", "checkpoint_last.pth")
    result = eval_explanations.main([
        "--config", config, "--weights", weights, "--num-triplets", str(triplets), "--num-curves", str(curves),
        "--seed", "0", "--no-progress", *seed_opts, "OUTPUT_DIR", os.path.join(run_dir, "explanation_quality"),
    ])
    return {name: {**{key: result["values"][name][key] for key in EXPLANATION_COLUMNS},
                   "sanity_top": result["table"][name].get("sanity_top"),
                   "pointing_game_by_part": result["pointing_game_by_part"][name]}
            for name in result["explainers"]}


# -- the study file --------------------------------------------------------------------------------


def arm_settings(base: str, opts: list[str], explanation: tuple[int, int],
                 variant: list[str] | None = None) -> dict[str, Any]:
    """What a recorded run of an arm (``base``, or a variant of it) depends on (compared when a
    study resumes)."""
    path = os.path.join(ROOT, CONFIGS[base])
    with open(path, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()[:16]
    settings = {"config": CONFIGS[base], "config_sha256": digest, "overrides": list(opts),
                "explanation_triplets": explanation[0], "explanation_curves": explanation[1]}
    if base in ARM_OVERRIDES:
        settings["arm_overrides"] = list(ARM_OVERRIDES[base])
    if variant is not None:
        settings["variant_overrides"] = list(variant)
    return settings


def load_study(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        return {"arms": {}, "runs": {}}
    try:
        with open(path) as handle:
            study = json.load(handle)
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"error: cannot read the study {path}: {exc}; move it aside to start afresh") from exc
    if not isinstance(study, dict) or not isinstance(study.get("runs"), dict):
        raise SystemExit(f"error: {path} is not a study file of this benchmark; use another --output-root")
    return study


def check_settings(study: dict[str, Any], arm: str, settings: dict[str, Any], path: str) -> None:
    recorded = study["arms"].get(arm)
    if recorded is not None and recorded != settings and study["runs"].get(arm):
        changed = sorted(k for k in settings if recorded.get(k) != settings[k])
        raise SystemExit(
            f"error: the study in {path} ran '{arm}' with other settings ({', '.join(changed)}): "
            "use another --output-root, or move that study aside"
        )


def merge_study(study: dict[str, Any], other: dict[str, Any], where: str) -> None:
    """Copies ``other``'s runs of the arms ``study`` has, for seeds it lacks; refuses an arm recorded
    with other settings (the runs would not be comparable)."""
    for arm, settings in study["arms"].items():
        runs = other["runs"].get(arm)
        if not runs:
            continue
        if other["arms"].get(arm) != settings:
            raise SystemExit(f"error: the study in {where} ran '{arm}' with other settings: it cannot be merged")
        for seed, record in runs.items():
            if seed not in study["runs"][arm]:
                study["runs"][arm][seed] = {**record, "merged_from": where}
                logger.info("merged %s seed %s from %s", arm, seed, where)


# -- tables ----------------------------------------------------------------------------------------


def _cell(summary: dict[str, Any]) -> str:
    spread = f" ± {summary['sd'] * 100:.1f}" if summary["sd"] is not None else ""
    return f"{summary['mean'] * 100:.1f}{spread}"


def _interval(interval: list[float] | None, scale: float = 100.0, digits: int = 1) -> str:
    return "n/a" if interval is None else f"[{interval[0] * scale:+.{digits}f}, {interval[1] * scale:+.{digits}f}]"


def summarize_study(study: dict[str, Any], comparisons: list[str]) -> dict[str, Any]:
    """Per-arm summaries, paired comparisons and explanation intervals of the recorded runs."""
    arms = {}
    for arm, runs in study["runs"].items():
        if not runs:
            continue
        arms[arm] = {
            "seeds": sorted(int(s) for s in runs),
            **{key: summarize([run["metrics"][key] for run in runs.values()]) for key in METRICS + RETRIEVAL_METRICS
               if all(key in run["metrics"] for run in runs.values())},
            "minutes": summarize([run["seconds"] / 60 for run in runs.values()]),
        }
        trained = [run["metrics"].get("train_seconds") for run in runs.values()]
        if all(t for t in trained):
            arms[arm]["train_minutes"] = summarize([t / 60 for t in trained])
        epochs = [run["metrics"].get("epochs", run["metrics"].get("epoch")) for run in runs.values()]
        if all(e for e in epochs):
            arms[arm]["epochs"] = summarize(epochs)
    compared = {}
    for pair in comparisons:
        a, _, b = pair.partition(":")
        runs_a, runs_b = study["runs"].get(a, {}), study["runs"].get(b, {})
        if not (set(runs_a) & set(runs_b)):
            continue
        compared[pair] = {
            key: paired_comparison({int(s): r["metrics"][key] for s, r in runs_a.items()},
                                   {int(s): r["metrics"][key] for s, r in runs_b.items()})
            for key in ("rank1", "mAP", "recall@1", "map@r")
            if all(key in r["metrics"] for r in (*runs_a.values(), *runs_b.values()))
        }
    explanations = {}
    for arm, runs in study["runs"].items():
        scored = {s: r["explanations"] for s, r in runs.items() if r.get("explanations")}
        if not scored:
            continue
        explainers = next(iter(scored.values()))
        explanations[arm] = {"seeds": sorted(int(s) for s in scored)}
        for name in explainers:
            row = {}
            for key in EXPLANATION_COLUMNS:
                groups = [[v for v in r[name][key] if v == v] for r in scored.values() if name in r]
                groups = [g for g in groups if g]
                if groups:
                    row[key] = {"mean": float(np.mean([np.mean(g) for g in groups])),
                                "interval": list(bootstrap_interval(groups))}
            by_part = {}
            for part in PARTS:
                groups = [r[name].get("pointing_game_by_part", {}).get(part, []) for r in scored.values() if name in r]
                groups = [g for g in groups if g]
                if groups:
                    by_part[part] = {"mean": float(np.mean([np.mean(g) for g in groups])),
                                     "interval": list(bootstrap_interval(groups)),
                                     "triplets": int(sum(len(g) for g in groups))}
            if by_part:
                row["pointing_game_by_part"] = by_part
            sanity = [r[name].get("sanity_top") for r in scored.values() if name in r]
            sanity = [v for v in sanity if v is not None]
            if sanity:
                row["sanity_top"] = summarize(sanity)
            explanations[arm][name] = row
    return {"arms": arms, "comparisons": compared, "explanations": explanations}


def markdown(summary: dict[str, Any], settings: dict[str, Any]) -> str:
    lines = ["| arm | seeds | rank-1 (%) | rank-5 (%) | mAP (%) | mINP (%) | minutes per run | training minutes "
             "| epochs |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for arm, row in summary["arms"].items():
        cells = [_cell(row[key]) if key in row else "n/a" for key in METRICS]
        trained = row.get("train_minutes")
        trained = "n/a" if trained is None else f"{trained['mean']:.1f}" + (
            f" ± {trained['sd']:.1f}" if trained["sd"] is not None else "")
        epochs = row.get("epochs")
        epochs = "n/a" if epochs is None else f"{epochs['mean']:.1f}"
        lines.append(f"| {arm} | {len(row['seeds'])} ({', '.join(map(str, row['seeds']))}) | "
                     + " | ".join(cells) + f" | {row['minutes']['mean']:.1f} | {trained} | {epochs} |")
    retrieval = [arm for arm, row in summary["arms"].items() if all(k in row for k in RETRIEVAL_METRICS)]
    if retrieval:
        lines += ["", "| arm | Recall@1 (%) | Recall@2 (%) | Recall@4 (%) | Recall@8 (%) | MAP@R (%) | R-Precision (%) "
                      "| NMI (%) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for arm in retrieval:
            row = summary["arms"][arm]
            lines.append(f"| {arm} | " + " | ".join(_cell(row[key]) for key in RETRIEVAL_METRICS) + " |")
    lines.append("")
    lines.append("Mean ± sample standard deviation over the seeds.")
    if summary["comparisons"]:
        lines += ["", "| comparison (A - B, paired by seed) | pairs | metric | mean difference (points) | "
                      "95% t interval | 95% bootstrap interval | A wins / losses | verdict |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for pair, by_metric in summary["comparisons"].items():
            for key, c in by_metric.items():
                verdict = c["verdict"].replace("a > b", "A > B").replace("a < b", "A < B")
                lines.append(
                    f"| {pair.replace(':', ' - ')} | {c['n']} | {key} | {c['mean_difference'] * 100:+.1f} | "
                    f"{_interval(c['t_interval'])} | {_interval(c['bootstrap_interval'])} | "
                    f"{c['wins']} / {c['losses']} | {verdict} |"
                )
    if summary["explanations"]:
        lines += ["", "| arm | explainer | pointing game | energy inside | deletion AUC (low) | insertion AUC (high) "
                      "| sanity: rank corr. after top randomised (low) |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for arm, rows in summary["explanations"].items():
            for name, row in rows.items():
                if name == "seeds":
                    continue
                cells = [f"{row[k]['mean']:.3f} [{row[k]['interval'][0]:.3f}, {row[k]['interval'][1]:.3f}]"
                         if k in row else "n/a" for k in EXPLANATION_COLUMNS]
                sanity = row.get("sanity_top")
                sanity_cell = "n/a" if sanity is None else (
                    f"{sanity['mean']:.2f}" + (f" ± {sanity['sd']:.2f}" if sanity["sd"] is not None else ""))
                lines.append(f"| {arm} | `{name}` | " + " | ".join(cells) + f" | {sanity_cell} |")
        lines.append("")
        lines.append("Mean over seeds, with the 95% two-level bootstrap interval (seeds, then images); "
                     "sanity: mean ± sd over seeds of the rank correlation between the trained model's "
                     "maps and those of the model with its head and last stage re-initialised.")
        parted = [(arm, name, row["pointing_game_by_part"]) for arm, rows in summary["explanations"].items()
                  for name, row in rows.items() if name != "seeds" and row.get("pointing_game_by_part")]
        if parted:
            lines += ["", "Pointing game by changed part (the same triplets, split by the part the negative changes):",
                      "", "| arm | explainer | " + " | ".join(PARTS) + " |",
                      "| --- | --- | " + " | ".join("---" for _ in PARTS) + " |"]
            for arm, name, parts in parted:
                cells = [f"{parts[p]['mean']:.3f} [{parts[p]['interval'][0]:.3f}, {parts[p]['interval'][1]:.3f}]"
                         if p in parts else "n/a" for p in PARTS]
                lines.append(f"| {arm} | `{name}` | " + " | ".join(cells) + " |")
            counts = {p: next((parts[p]["triplets"] for _, _, parts in parted if p in parts), 0) for p in PARTS}
            lines += ["", "Triplets per part, over all seeds: " + ", ".join(f"{p} {n}" for p, n in counts.items()) + "."]
    lines += ["", "Settings: " + "; ".join(
        f"{arm}: `{s['config']}` (sha256 {s['config_sha256']})"
        + (f" with `{' '.join(s['arm_overrides'])}`" if s.get("arm_overrides") else "")
        + (f" with `{' '.join(s['variant_overrides'])}`" if s.get("variant_overrides") else "")
        for arm, s in settings.items()
    ) + (f"; overrides `{' '.join(next(iter(settings.values()))['overrides'])}`"
         if settings and next(iter(settings.values()))["overrides"] else "")]
    return "\n".join(lines) + "\n"


def write_study(root: str, study: dict[str, Any], comparisons: list[str]) -> dict[str, Any]:
    from reid.io import atomic_write, write_json

    study["summary"] = summarize_study(study, comparisons)
    write_json(os.path.join(root, STUDY_FILE), study)
    with atomic_write(os.path.join(root, TABLE_FILE)) as handle:
        handle.write(markdown(study["summary"], study["arms"]))
    return study


def default_trainers() -> dict[str, Callable[..., dict[str, float]]]:
    """How each arm trains: ``reid train`` for ours, torchreid's engine for the references."""
    trainers: dict[str, Callable[..., dict[str, float]]] = {arm: train_ours for arm in ARMS}
    trainers["torchreid_resnet18"] = functools.partial(train_torchreid, arch="resnet18")
    for arm in ("torchreid_mobilenetv2", "torchreid_mobilenetv2_time"):
        trainers[arm] = functools.partial(train_torchreid, arch="mobilenetv2_x1_0")
    return trainers


def main(argv: list[str] | None = None,
         trainers: dict[str, Callable[..., dict[str, float]]] | None = None) -> dict[str, Any]:
    """Runs the study (``trainers`` replaces how an arm trains, for tests of the bookkeeping)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = args.output_root
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, STUDY_FILE)
    study = load_study(path)
    explanation = (args.explanation_triplets, args.explanation_curves)
    base_of = {arm: args.variants[arm][0] if arm in args.variants else arm for arm in args.arms}
    extra = {arm: [*ARM_OVERRIDES.get(base_of[arm], []), *(args.variants[arm][1] if arm in args.variants else [])]
             for arm in args.arms}
    for arm in args.arms:
        explained = explanation if base_of[arm] not in TORCHREID_ARMS else (0, 0)
        settings = arm_settings(base_of[arm], args.opts, explained, args.variants[arm][1] if arm in args.variants else None)
        check_settings(study, arm, settings, path)
        study["arms"][arm] = settings
        study["runs"].setdefault(arm, {})
    for other in args.merge:
        merge_study(study, load_study(os.path.join(other, STUDY_FILE)), other)
    trainers = trainers or default_trainers()
    if args.rescore_explanations and args.explanation_triplets:
        for arm in args.arms:
            if base_of[arm] in TORCHREID_ARMS:
                continue
            for seed, record in sorted(study["runs"][arm].items()):
                logger.info("rescoring the explanations of %s seed %s", arm, seed)
                record["explanations"] = explain_run(
                    os.path.join(ROOT, CONFIGS[base_of[arm]]), os.path.join(root, arm, f"seed{seed}"),
                    [*args.opts, *extra[arm]], *explanation,
                )
                write_study(root, study, args.compare)
    todo = [(seed, arm) for seed in args.seeds for arm in args.arms if str(seed) not in study["runs"][arm]]
    if args.report_only:
        logger.info("--report-only: %d runs of the requested seeds are not recorded and are left out", len(todo))
        todo = []
    logger.info("study %s: %d runs to go of %d", path, len(todo), len(args.seeds) * len(args.arms))
    for number, (seed, arm) in enumerate(todo, 1):
        run_dir = os.path.join(root, arm, f"seed{seed}")
        config = os.path.join(ROOT, CONFIGS[base_of[arm]])
        opts = [*args.opts, *extra[arm]]
        logger.info("[%d/%d] %s seed %d -> %s", number, len(todo), arm, seed, run_dir)
        start = time.perf_counter()
        budget = {}
        if base_of[arm] in TIME_MATCHED:
            matched = study["runs"].get(TIME_MATCHED[base_of[arm]], {}).get(str(seed))
            if matched is None or not matched["metrics"].get("train_seconds"):
                raise SystemExit(f"error: {arm} matches the training time of {TIME_MATCHED[base_of[arm]]} seed {seed}, "
                                 "which has no recorded run with train_seconds: add that arm to --arms before it")
            budget = {"budget_seconds": matched["metrics"]["train_seconds"]}
        metrics = trainers[base_of[arm]](config, run_dir, seed, opts, args.progress, **budget)
        record = {"metrics": {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
                  "seconds": time.perf_counter() - start}
        if args.explanation_triplets and base_of[arm] not in TORCHREID_ARMS:
            record["explanations"] = explain_run(config, run_dir, opts, *explanation)
        study["runs"][arm][str(seed)] = record
        write_study(root, study, args.compare)
    study = write_study(root, study, args.compare)
    print(markdown(study["summary"], study["arms"]), end="")
    return study


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
