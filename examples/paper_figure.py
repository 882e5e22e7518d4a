"""A figure for a paper: one query-gallery pair explained by similarity attention, as a PNG panel.

Any embedding model the ``reid`` commands load works (PCB, or a torchreid arch with ``MODEL.NAME
torchreid``; AVSL's distance is explained by ``reid explain``'s attribution panels); the weights are the ones ``--weights`` would take::

    python examples/paper_figure.py --config configs/torchreid_osnet.yaml \\
        --weights log/osnet/model/model.pth.tar-1 --query q.jpg --gallery g.jpg --out figure.png

The map is the head layer's (``model.explainability.head_layer``) explained through the head
only, with ``--same`` as ``reid explain``: ``model`` explains the pair as a match. For a shallower
layer use ``reid.explain.explain_pair(model, layer, ...)`` on the images instead.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--query", required=True, help="query image file")
    parser.add_argument("--gallery", required=True, help="gallery image file")
    parser.add_argument("--out", default="figure.png", help="PNG (or any format PIL writes) to write")
    parser.add_argument("--same", choices=("model", "truth"), default="model",
                        help="model: explain as a match; truth: as a match only if --correct")
    parser.add_argument("--correct", choices=("yes", "no", "unknown"), default="unknown",
                        help="ground truth, shown by colour")
    parser.add_argument("--rank", type=int, default=1, help="the gallery image's rank, shown in the header")
    parser.add_argument("opts", nargs="*", help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> np.ndarray:
    """Writes the panel; returns it (``(H, W, 3)`` uint8)."""
    args = parse_args(argv)
    from reid.builders import build_model_for_state
    from reid.config import load_config
    from reid.engine.checkpoint import load_checkpoint, model_state_from_checkpoint
    from reid.explain import explain_pair_features, normalize_maps, resize_maps
    from reid.vis.image import load_image, save_image
    from reid.vis.panels import pair_panel

    cfg = load_config(args.config, args.opts)
    model = build_model_for_state(cfg, model_state_from_checkpoint(load_checkpoint(args.weights)))  # eval mode
    if not model.explainability.attention:
        raise SystemExit(f"{type(model).__name__}'s distance is not one between embeddings: use reid explain")
    size = (cfg.DATA.HEIGHT, cfg.DATA.WIDTH)
    mean = torch.tensor(cfg.DATA.NORM_MEAN).view(3, 1, 1)
    std = torch.tensor(cfg.DATA.NORM_STD).view(3, 1, 1)

    def prepare(path: str) -> tuple[np.ndarray, torch.Tensor]:
        """The image at the network's size (uint8, for the panel) and its normalised tensor."""
        image = torch.from_numpy(load_image(path)).permute(2, 0, 1).float().div(255)
        image = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        shown = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        return shown, (image - mean) / std

    (query, q), (gallery, g) = prepare(args.query), prepare(args.gallery)
    correct = {"yes": True, "no": False, "unknown": None}[args.correct]
    same = True if args.same == "model" else bool(correct)
    with torch.no_grad():
        maps = model.forward_features(torch.stack([q, g]))
        embeddings = model.embed_features(maps)
    distance = float(((embeddings[0] - embeddings[1]) ** 2).sum())
    query_map, gallery_map = explain_pair_features(model.embed_features, maps[:1], maps[1:], same=same)
    heat = normalize_maps(resize_maps(torch.cat([query_map, gallery_map]).detach(), size)).numpy()
    panel = pair_panel(query, gallery, heat[0], heat[1], distance, rank=args.rank, correct=correct)
    save_image(args.out, panel)
    print(f"wrote {args.out} (squared distance {distance:.4f})")
    return panel


if __name__ == "__main__":
    main()
