"""Feature extraction and ranking evaluation of an embedding model on query/gallery loaders.

Also an engine's evaluation options (:class:`EvalOptions`); the mixed-precision switch shared by
training and feature extraction is in ``reid/engine/amp.py``.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from reid.metrics import DistanceRows, evaluate
from reid.metrics.rerank import rerank_memory_mb
from reid.io import names_file

from .amp import autocast_context, check_amp

if TYPE_CHECKING:  # imported where used: the retrieval metrics load with the first retrieval target
    from reid.metrics.retrieval_eval import RetrievalAccumulator

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalOptions:
    """How test embeddings are compared and scored.

    Attributes:
        dist_metric: ``euclidean`` (squared, as torchreid) or ``cosine``.
        normalize_feature: L2-normalise embeddings before the distance.
        ranks: CMC ranks to report.
        use_metric_cuhk03: CUHK03 single-gallery-shot protocol.
        rerank: k-reciprocal re-ranking of the distance matrix.
        max_matrix_mb: largest query x gallery float32 distance matrix built whole; above it
            the evaluation streams blocks of rows (:class:`reid.metrics.DistanceRows`, same
            numbers) and re-ranking, which needs far more, is refused with the memory it would
            need (:func:`reid.metrics.rerank.rerank_memory_mb`) when that exceeds the memory
            available.
        recall_ks: the K of Recall@K on retrieval targets (CUB-200-2011, Cars196: 1, 2, 4, 8;
            Stanford Online Products: 1, 10, 100, 1000).
    """

    dist_metric: str = "euclidean"
    normalize_feature: bool = False
    ranks: tuple[int, ...] = (1, 5, 10, 20)
    use_metric_cuhk03: bool = False
    rerank: bool = False
    max_matrix_mb: float = 2048.0
    recall_ks: tuple[int, ...] = (1, 2, 4, 8)


@dataclass
class ExtractedFeatures:
    """Embeddings of one split with their labels, as :func:`extract_dataset_features` returns
    them (not to be confused with ``reid.metrics``' plain tensor-or-array feature type).

    Attributes:
        features: ``(N, D)`` float32 on the CPU.
        pids: ``(N,)`` identities.
        camids: ``(N,)`` cameras.
        paths: N image paths.
    """

    features: torch.Tensor
    pids: np.ndarray
    camids: np.ndarray
    paths: list[str] = field(default_factory=list)


@torch.no_grad()
def extract_dataset_features(
    model: nn.Module,
    loader: Iterable[dict],
    device: torch.device,
    desc: str = "features",
    progress: bool = True,
    amp: str = "off",
    channels_last: bool = False,
) -> ExtractedFeatures:
    """Runs ``model`` (expected in eval mode) over ``loader`` and collects the embeddings.

    A whole split at once; torchreid's ``Engine.extract_features`` (kept on our engines) is the
    forward pass of one batch.

    Args:
        model: maps ``(B, 3, H, W)`` images to ``(B, D)`` embeddings.
        loader: batches with ``img``, ``pid``, ``camid`` and ``impath``.
        device: where the model runs.
        desc: progress-bar label.
        progress: show the progress bar.
        amp: ``off``, ``bf16`` or ``fp16``: the forward pass under :func:`autocast_context`.
        channels_last: feed the images in channels_last memory format.

    Returns:
        :class:`ExtractedFeatures`, float32 on the CPU whatever ``amp``.
    """
    check_amp(amp, device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    feats, pids, camids, paths = [], [], [], []
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not progress):
        images = batch["img"].to(device, non_blocking=True).contiguous(memory_format=memory_format)
        with autocast_context(device, amp):
            out = model(images)
        feats.append(out.float().cpu())
        pids.append(np.asarray(batch["pid"]))
        camids.append(np.asarray(batch["camid"]))
        paths.extend(batch["impath"])
    return ExtractedFeatures(torch.cat(feats), np.concatenate(pids), np.concatenate(camids), paths)


FEATURES_FORMAT = 1


def features_file(folder: str, target: str) -> str:
    """``folder/<target>.npz``, the target's name made safe for a file name."""
    return os.path.join(folder, re.sub(r"[^A-Za-z0-9._-]", "_", target) + ".npz")


def save_features(path: str, target: str, query: ExtractedFeatures, gallery: ExtractedFeatures) -> str:
    """Writes one target's query and gallery features, identities, cameras and image paths to an
    uncompressed ``.npz`` (plain arrays, read back without pickle). Returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    arrays: dict[str, np.ndarray] = {
        "format": np.asarray(FEATURES_FORMAT), "target": np.asarray(target),
    }
    for split, extracted in (("query", query), ("gallery", gallery)):
        arrays[f"{split}_features"] = extracted.features.float().cpu().numpy()
        arrays[f"{split}_pids"] = np.asarray(extracted.pids)
        arrays[f"{split}_camids"] = np.asarray(extracted.camids)
        arrays[f"{split}_paths"] = np.asarray([str(p) for p in extracted.paths], dtype=np.str_)
    tmp = path + ".tmp.npz"
    with names_file(path):
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    logger.info("features of %s written to %s (%d queries, %d gallery images)", target, path, len(query.pids),
                len(gallery.pids))
    return path


def load_features(path: str, target: str | None = None) -> tuple[ExtractedFeatures, ExtractedFeatures]:
    """Reads what :func:`save_features` wrote.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a features file of this format, inconsistent arrays, or (with ``target``)
            the features of another target.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"features file not found: {path} (write it with reid test --save-features)")
    try:
        with np.load(path, allow_pickle=False) as data:
            content = {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a features file written by reid test --save-features: {exc}") from exc
    needed = {"format", "target"} | {f"{s}_{k}" for s in ("query", "gallery") for k in ("features", "pids", "camids", "paths")}
    missing = sorted(needed - set(content))
    if missing:
        raise ValueError(f"{path} is not a features file written by reid test --save-features (missing {missing})")
    if int(content["format"]) != FEATURES_FORMAT:
        raise ValueError(f"{path} has features format {int(content['format'])}, this version reads {FEATURES_FORMAT}")
    if target is not None and str(content["target"]) != target:
        raise ValueError(f"{path} holds the features of {str(content['target'])!r}, not of {target!r}")
    out = []
    for split in ("query", "gallery"):
        feats = content[f"{split}_features"]
        pids, camids, paths = content[f"{split}_pids"], content[f"{split}_camids"], content[f"{split}_paths"]
        if feats.ndim != 2 or not (len(feats) == len(pids) == len(camids) == len(paths)):
            raise ValueError(f"{path}: the {split} arrays disagree in length or the features are not (N, D)")
        out.append(ExtractedFeatures(torch.from_numpy(feats), pids, camids, [str(p) for p in paths]))
    if out[0].features.shape[1] != out[1].features.shape[1]:
        raise ValueError(f"{path}: query and gallery features have different dimensions")
    return out[0], out[1]


@dataclass(frozen=True)
class FeatureFiles:
    """Where an evaluation saves its extracted features, or reads them instead of extracting.

    Attributes:
        folder: one ``<target>.npz`` per target (:func:`features_file`).
        mode: ``save`` (extract, then write) or ``load`` (read; the model is not run).
    """

    folder: str
    mode: str

    def __post_init__(self) -> None:
        if self.mode not in ("save", "load"):
            raise ValueError(f"mode must be 'save' or 'load', got {self.mode!r}")


@torch.no_grad()
def evaluate_targets(
    model: nn.Module,
    test_loader: Mapping[str, Mapping[str, Iterable[dict]]],
    score: Callable[[ExtractedFeatures, ExtractedFeatures], Mapping[str, Any]],
    device: torch.device,
    progress: bool = True,
    amp: str = "off",
    channels_last: bool = False,
    feature_files: FeatureFiles | None = None,
    score_retrieval: Callable[[ExtractedFeatures], Mapping[str, float]] | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, list[float]]]:
    """Evaluates ``model`` on every target of a torchreid ``test_loader``.

    Args:
        model: the embedding model (put in eval mode here, its mode restored after).
        test_loader: ``{target: {"query": loader, "gallery": loader}}``.
        score: ranking metrics of query against gallery features (e.g. ``ReidEngine.score``);
            its result may carry the CMC curve as ``.cmc`` (see :func:`ranking_metrics`).
        device, progress, amp, channels_last: see :func:`extract_dataset_features`.
        feature_files: save the extracted features, or load them instead of extracting.
        score_retrieval: used instead of ``score`` on a retrieval target (a dataset with
            ``retrieval = True``, whose query and gallery are the same images with ``camid`` =
            index, so that the protocol removes exactly the query itself): the ranking metrics
            (whose rank-k is then Recall@k) and the retrieval metrics of its test set, which is
            embedded once.

    Returns:
        ``{target: {rank1, ..., mAP, mINP}}`` and ``{target: CMC curve}`` (targets whose scores
        carry one).

    Raises:
        Exception: what extracting or scoring a target raised, with a note naming the target.
    """
    was_training = model.training
    model.eval()
    results, curves = {}, {}
    try:
        for name, loaders in test_loader.items():
            try:
                retrieval = bool(getattr(getattr(loaders["query"], "dataset", None), "retrieval", False))
                if feature_files is not None and feature_files.mode == "load":
                    query, gallery = load_features(features_file(feature_files.folder, name), name)
                    logger.info("%s: features read from %s", name, features_file(feature_files.folder, name))
                elif retrieval:  # query = gallery: the test set, embedded once
                    query = extract_dataset_features(
                        model, loaders["query"], device, f"{name} test", progress, amp=amp, channels_last=channels_last,
                    )
                    gallery = query
                else:
                    query, gallery = (
                        extract_dataset_features(
                            model, loaders[split], device, f"{name} {split}", progress, amp=amp,
                            channels_last=channels_last,
                        )
                        for split in ("query", "gallery")
                    )
                if feature_files is not None and feature_files.mode == "save":
                    save_features(features_file(feature_files.folder, name), name, query, gallery)
                if retrieval and score_retrieval is not None:
                    scores = score_retrieval(query)
                else:
                    scores = score(query, gallery)
            except Exception as exc:
                exc.add_note(f"while evaluating the target '{name}'")
                raise
            cmc = getattr(scores, "cmc", None)
            if cmc is not None:
                curves[name] = [float(x) for x in cmc]
            results[name] = {key: float(value) for key, value in scores.items()}
            logger.info("%s: %s", name, " ".join(f"{k} {v:.1%}" for k, v in results[name].items()))
    finally:
        model.train(was_training)
    return results, curves


class RankMetrics(dict):
    """``{rank1, ..., mAP, mINP}`` as floats, with the whole CMC curve in :attr:`cmc`."""

    cmc: np.ndarray


def ranking_metrics(
    distmat: np.ndarray,
    query: ExtractedFeatures,
    gallery: ExtractedFeatures,
    ranks: Iterable[int] = (1, 5, 10, 20),
    use_metric_cuhk03: bool = False,
    tie_break: str = "numpy",
) -> dict[str, float]:
    """rank-k, mAP and mINP (fractions in [0, 1]) of a distance matrix, and the CMC curve.

    The CMC goes up to rank 50 (or the largest requested rank, or the gallery size if smaller).
    A requested rank beyond the CMC (a gallery smaller than the rank) is not reported: a warning
    names it. ``tie_break``: the order of equal distances (:func:`reid.metrics.evaluate`):
    ``numpy`` (torchreid's, re-id targets) or ``stable`` (gallery index order, retrieval targets,
    whose rank-k is then exactly their Recall@k).
    """
    result = evaluate(
        distmat, query.pids, gallery.pids, query.camids, gallery.camids,
        max_rank=max(max(ranks), 50), use_metric_cuhk03=use_metric_cuhk03, tie_break=tie_break,
    )
    out = RankMetrics()
    out.cmc = np.asarray(result.cmc, dtype=np.float64)
    out |= {f"rank{r}": float(result.cmc[r - 1]) for r in ranks if r <= len(result.cmc)}
    beyond = [r for r in ranks if r > len(result.cmc)]
    if beyond:
        logger.warning(
            "ranks %s are not reported: the CMC has %d ranks (%d gallery images); lower TEST.RANKS",
            beyond, len(result.cmc), distmat.shape[1],
        )
    out["mAP"] = float(result.mAP)
    if result.mINP is not None:
        out["mINP"] = float(result.mINP)
    return out


def rank_features(
    query: ExtractedFeatures,
    gallery: ExtractedFeatures,
    options: EvalOptions,
    distances: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    retrieval: bool = False,
) -> RankMetrics:
    """Ranking metrics (:func:`ranking_metrics`) of ``query`` against ``gallery`` under ``options``.

    Args:
        query: the query set's features.
        gallery: the gallery set's features.
        options: ranks, CUHK03 metric, re-ranking, memory budget, Recall@K.
        distances: ``(N, D), (M, D)`` features -> ``(N, M)`` distances on the CPU (the model's own,
            see :meth:`reid.engine.base.ReidEngine.distance_matrix`; when it takes ``out=``, streamed
            blocks are written into one reused buffer); the query-query and
            gallery-gallery matrices come from it too when ``options.rerank`` (k-reciprocal).
        retrieval: ``query`` and ``gallery`` are one retrieval test set (:func:`evaluate_targets`):
            the retrieval metrics of :func:`retrieval_scores` join the ranking metrics, from the
            same distances (before any re-ranking). Where the distances stream (above
            ``options.max_matrix_mb``, no re-ranking), both come from one pass over the blocks of
            rows: each block the ranking computes is also handed to a
            :class:`reid.metrics.retrieval_eval.RetrievalAccumulator`
            (:meth:`reid.metrics.DistanceRows.observed`), so each block's distances are computed
            once, not once per metric family.
    """
    num_q, num_g = len(query.features), len(gallery.features)
    if options.rerank:
        from reid.metrics import re_ranking

        check_rerank_memory(num_q, num_g)
        raw = distances(query.features, gallery.features).numpy()
        q_q = distances(query.features, query.features).numpy()
        g_g = distances(gallery.features, gallery.features).numpy()
        ranked = re_ranking(raw, q_q, g_g)
    else:
        raw = ranked = _distances_within_budget(query.features, gallery.features, options, distances)
    accumulator = None
    if retrieval and not options.rerank and isinstance(raw, DistanceRows):
        # one pass: the retrieval metrics take each block as the ranking computes it
        accumulator = retrieval_accumulator(query, options)
        ranked = raw.observed(accumulator.add)
    # one tie rule per target: a retrieval target orders equal distances by gallery index, as its
    # Recall@K does (reid.metrics.retrieval_eval), so that its rank-k is its Recall@k exactly
    metrics = ranking_metrics(ranked, query, gallery, options.ranks, options.use_metric_cuhk03,
                              tie_break="stable" if retrieval else "numpy")
    if retrieval:
        metrics.update(retrieval_scores(raw, query, options, accumulator=accumulator))
    return metrics


def _distances_within_budget(
    query: torch.Tensor, gallery: torch.Tensor, options: EvalOptions,
    distances: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> np.ndarray | DistanceRows:
    """The whole ``(Q, G)`` matrix, or above ``options.max_matrix_mb`` its rows computed block by
    block (:class:`reid.metrics.DistanceRows`: the evaluators give the same numbers)."""
    matrix_mb = 4.0 * len(query) * len(gallery) / 2**20
    if matrix_mb <= options.max_matrix_mb:
        return distances(query, gallery).numpy()
    logger.info(
        "streaming evaluation: the %d x %d distance matrix would need %.0f MB (TEST.MAX_MATRIX_MB %.0f); "
        "ranking blocks of rows instead (same numbers)", len(query), len(gallery), matrix_mb, options.max_matrix_mb,
    )
    return DistanceRows.from_features(
        query, gallery, distances, block_mb=min(STREAM_BLOCK_MB, options.max_matrix_mb),
        into_buffer=takes_out(distances),
    )


def takes_out(distances: Callable[..., torch.Tensor]) -> bool:
    """Whether ``distances`` accepts ``out=`` (the engine's and the models' distances do): then the
    streamed blocks are written into one reused buffer."""
    try:
        parameters = inspect.signature(distances).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin)
        return False
    return any(p.name == "out" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


# Size of one block of distance rows on the streaming path (or the budget, if smaller). Each block
# reads the whole gallery's features again, so small blocks make the product memory-bound: with
# Market-1501's 500k distractors (1 GB of 512-d gallery features), 32 MB blocks of 16 rows read
# 210 GB in all, 256 MB blocks of 130 rows 27 GB.
STREAM_BLOCK_MB = 256.0


def available_memory_mb() -> float | None:
    """The memory the kernel says is available now (``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def check_rerank_memory(num_query: int, num_gallery: int, available_mb: float | None = None) -> None:
    """Refuses a re-ranking whose matrices would not fit the memory available now.

    Raises:
        MemoryError: with the memory it would need and what to do instead.
    """
    needed = rerank_memory_mb(num_query, num_gallery)
    available = available_memory_mb() if available_mb is None else available_mb
    if available is not None and needed > available:
        raise MemoryError(
            f"TEST.RERANK on {num_query} queries x {num_gallery} gallery images needs at least {needed / 1024:.1f} GB "
            f"(its (Q+G)^2 distances), but {available / 1024:.1f} GB are available: set TEST.RERANK False "
            "(the evaluation itself streams large galleries in bounded memory)"
        )


def _recall_ks(num: int, options: EvalOptions) -> tuple[int, ...]:
    """The K of ``options.recall_ks`` that a retrieval set of ``num`` images can report."""
    return tuple(k for k in options.recall_ks if k <= num - 1)


def retrieval_accumulator(test: ExtractedFeatures, options: EvalOptions) -> RetrievalAccumulator:
    """An empty :class:`reid.metrics.retrieval_eval.RetrievalAccumulator` of a retrieval test set,
    for ``options.recall_ks`` (those its size allows, see :func:`retrieval_scores`), on the CPU."""
    from reid.metrics.retrieval_eval import RetrievalAccumulator

    return RetrievalAccumulator(test.pids, recall_ks=_recall_ks(len(test.features), options))


def retrieval_scores(
    distmat: np.ndarray | DistanceRows,
    test: ExtractedFeatures,
    options: EvalOptions,
    *,
    accumulator: RetrievalAccumulator | None = None,
) -> dict[str, float]:
    """Recall@K (``options.recall_ks``), MAP@R, R-Precision and NMI of a retrieval test set, every
    image a query against every other (:mod:`reid.metrics.retrieval_eval`), from its ``(N, N)``
    distances (whole or by blocks of rows).

    Args:
        distmat: the distances, read block by block unless ``accumulator`` already holds them.
        test: the test set's features and labels.
        options: ``recall_ks``.
        accumulator: a :func:`retrieval_accumulator` that was handed every block of ``distmat``
            (by :func:`rank_features`' one pass): its metrics are taken as they are. Should a row
            be missing from it or have come twice, a warning says so and the metrics are computed
            from ``distmat`` instead (a second pass over its rows, the same numbers).
    """
    from reid.metrics.retrieval_eval import nmi, retrieval_metrics

    num = len(test.features)
    ks = _recall_ks(num, options)
    if len(ks) < len(options.recall_ks):
        logger.warning("Recall@K for K in %s not reported: the test set has %d images",
                       [k for k in options.recall_ks if k > num - 1], num)
    problem = accumulator.incomplete() if accumulator is not None else None
    if accumulator is not None and problem is None:
        result = accumulator.result()
    else:
        if problem is not None:
            logger.warning("%s; computing the retrieval metrics in a second pass over the distances", problem)
        result = retrieval_metrics(distmat, test.pids, recall_ks=ks)
    out = {f"recall@{k}": float(v) for k, v in result.recall.items()}
    out["map@r"] = float(result.map_at_r)
    out["r_precision"] = float(result.r_precision)
    out["nmi"] = float(nmi(test.features, test.pids))
    return out
