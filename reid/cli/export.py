"""Export the embedding network to ONNX and check it against PyTorch with onnxruntime.

Usage::

    reid export --config FILE --weights CKPT [--output PATH] [--opset N]
        [--batch-size B] [--tolerance T] [--exporter dynamo|torchscript] [KEY VALUE ...]

Writes ``--output`` (default ``OUTPUT_DIR/model.onnx``): the model's eval-mode forward, input
``images`` of shape ``(batch, 3, DATA.HEIGHT, DATA.WIDTH)`` (float32, resized and normalised
with ``DATA.NORM_MEAN`` / ``DATA.NORM_STD`` as in the test transforms), output ``embeddings``
``(batch, D)``; the batch axis is dynamic. Then runs the ONNX model with onnxruntime (CPU) and
PyTorch on one batch of ``--batch-size`` random images (a size other than the one traced, so the
dynamic axis is exercised), logs the largest absolute difference of the embeddings and fails
(exit status 1) when it exceeds ``--tolerance``.

Retrieval with the exported model: embed query and gallery images, then rank the gallery by the
distance the config evaluates with (``TEST.DIST_METRIC``, after L2 normalisation when
``TEST.NORMALIZE_FEATURE``); see "Export to ONNX" in ``docs/training.md``.

Needs ``onnx`` and ``onnxruntime`` (``pip install .[export]``); the default ``dynamo`` exporter
(PyTorch's ``torch.export``-based one) also needs ``onnxscript``, ``--exporter torchscript``
does not. Models whose test distance is not one between embeddings are refused with the reason
(AVSL: its ``d_hat`` is computed by the model's similarity graph from pairs of images).
"""

from __future__ import annotations

import argparse
import logging
import os

import torch

from reid.cli.common import (
    CheckFailed, check_weights_config, config_or_exit, new_parser, parse_with_overrides, releases_output_dirs,
)
from reid.builders import build_model_for_state, model_recipe, setup_logging
from reid.engine.checkpoint import load_checkpoint, model_state_from_checkpoint
from reid.io import names_file

logger = logging.getLogger("export")

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
TRACE_BATCH = 2
EXPORTERS = ("dynamo", "torchscript")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = new_parser("export", __doc__, weights=True)
    parser.add_argument("--output", default="", help="ONNX file to write (default OUTPUT_DIR/model.onnx)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset version (default 18)")
    parser.add_argument("--batch-size", type=int, default=3, help="batch of the onnxruntime check (default 3)")
    parser.add_argument(
        "--tolerance", type=float, default=1e-4,
        help="largest allowed absolute difference of ONNX and PyTorch embeddings (default 1e-4)",
    )
    parser.add_argument(
        "--exporter", choices=EXPORTERS, default="dynamo",
        help="torch.onnx exporter: dynamo (torch.export based, needs onnxscript) or torchscript (legacy)",
    )
    parser.add_argument("opts", nargs="*", help="KEY VALUE overrides")
    return parse_with_overrides(parser, argv)


def require(module: str, why: str):
    """Imports ``module`` or stops with the package to install."""
    try:
        return __import__(module)
    except ImportError as exc:
        raise SystemExit(f"{module} is not installed ({why}); pip install '.[export]'") from exc


def load_model(cfg, weights: str) -> torch.nn.Module:
    """The configured model with ``weights`` loaded (strictly), in eval mode, on the CPU."""
    recipe = model_recipe(cfg)
    if recipe.export_refusal:
        raise SystemExit(
            f"{cfg.MODEL.NAME.upper()} export is not supported: {recipe.export_refusal}; "
            f"export a model whose test distance is one between embeddings"
        )
    checkpoint = load_checkpoint(weights, map_location="cpu")
    check_weights_config(cfg, checkpoint, weights, logger)
    state = model_state_from_checkpoint(checkpoint)
    try:
        return build_model_for_state(cfg, state)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc


def export_onnx(
    model: torch.nn.Module, example: torch.Tensor, path: str, opset: int, exporter: str = "dynamo"
) -> None:
    """Writes ``model``'s forward on ``example (B, 3, H, W)`` to ``path`` with a dynamic batch."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    names = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset)
    with torch.no_grad(), names_file(path):
        if exporter == "dynamo":
            require("onnxscript", "the dynamo ONNX exporter needs it; or use --exporter torchscript")
            torch.onnx.export(
                model, (example,), path, dynamo=True, external_data=False,
                dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False, **names,
            )
        else:
            torch.onnx.export(
                model, (example,), path, dynamo=False,
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, **names,
            )


def compare_with_onnxruntime(model: torch.nn.Module, path: str, images: torch.Tensor) -> tuple[float, int]:
    """Largest absolute difference of the embeddings of ``images`` by PyTorch and onnxruntime,
    and the embedding size D."""
    onnxruntime = require("onnxruntime", "the export is checked with it")
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})
    with torch.no_grad():
        torch_out = model(images)
    if tuple(onnx_out.shape) != tuple(torch_out.shape):
        raise CheckFailed(f"ONNX output shape {onnx_out.shape} differs from PyTorch's {tuple(torch_out.shape)}")
    return float((torch.from_numpy(onnx_out) - torch_out).abs().max()), int(torch_out.shape[1])


@releases_output_dirs
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cfg = config_or_exit(args)
    if args.batch_size < 1 or args.batch_size == TRACE_BATCH:
        raise SystemExit(f"--batch-size must be a positive size other than {TRACE_BATCH} (the traced batch)")
    if args.exporter == "torchscript" and cfg.MODEL.PADDING_MODE != "zeros":
        raise SystemExit(
            f"the torchscript exporter cannot export MODEL.PADDING_MODE {cfg.MODEL.PADDING_MODE} (after the padded "
            "convolutions it loses the map sizes that the stripe pooling needs); use --exporter dynamo (the default)"
        )
    onnx = require("onnx", "it writes and checks the model")
    setup_logging(cfg.OUTPUT_DIR, "export")
    for name in ("onnxscript", "onnx_ir", "torch.onnx"):  # their INFO lines drown ours
        logging.getLogger(name).setLevel(logging.WARNING)
    model = load_model(cfg, args.weights)
    logger.info("loaded %s weights from %s", type(model).__name__, args.weights)
    output = args.output or os.path.join(cfg.OUTPUT_DIR, "model.onnx")
    generator = torch.Generator().manual_seed(cfg.SEED)
    shape = (3, cfg.DATA.HEIGHT, cfg.DATA.WIDTH)
    example = torch.randn(TRACE_BATCH, *shape, generator=generator)
    logger.info("exporting with the %s exporter, opset %d", args.exporter, args.opset)
    export_onnx(model, example, output, args.opset, args.exporter)
    onnx.checker.check_model(output)
    images = torch.randn(args.batch_size, *shape, generator=generator)
    difference, dim = compare_with_onnxruntime(model, output, images)
    logger.info(
        "wrote %s: input %s (batch, 3, %d, %d), output %s (batch, %d); max abs difference "
        "ONNX vs PyTorch on %d images: %.3g (tolerance %.3g)",
        output, INPUT_NAME, cfg.DATA.HEIGHT, cfg.DATA.WIDTH, OUTPUT_NAME, dim, args.batch_size,
        difference, args.tolerance,
    )
    if not difference <= args.tolerance:
        raise CheckFailed(
            f"ONNX and PyTorch embeddings differ by {difference:.3g} > tolerance {args.tolerance:.3g}: "
            f"do not use {output}"
        )
    return {"output": os.path.abspath(output), "max_abs_diff": difference, "embedding_dim": dim}

