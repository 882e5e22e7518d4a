"""A torchreid user's training script, as torchreid's own documentation writes one.

It trains a network of torchreid's model zoo with torchreid's ``ImageSoftmaxEngine`` and
checkpointing (``SAVE_DIR/model/model.pth.tar-N``) on the toolkit's synthetic set, registered
with torchreid like any custom dataset. Nothing of the toolkit is used but the dataset class: the
checkpoint it writes is the one a torchreid user already has, which the ``reid`` commands then
test, explain and measure (docs/own-data-and-models.md, "Explaining your torchreid model")::

    python examples/train_with_torchreid.py --root reid-data --save-dir log/osnet --epochs 1
    reid test --config configs/torchreid_osnet.yaml --weights log/osnet/model/model.pth.tar-1

The synthetic set's size options must match those the ``reid`` commands are given (the config's
``DATA.SYNTHETIC.*``); the defaults here are the config's defaults.
"""

from __future__ import annotations

import argparse
import functools
import warnings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="reid-data", help="data root (the synthetic set is generated there once)")
    parser.add_argument("--save-dir", default="log/osnet_x0_25", help="torchreid's save_dir")
    parser.add_argument("--arch", default="osnet_x0_25", help="a name of torchreid's model registry")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-ids", type=int, default=300, help="DATA.SYNTHETIC.NUM_IDS")
    parser.add_argument("--num-cams", type=int, default=6, help="DATA.SYNTHETIC.NUM_CAMS")
    parser.add_argument("--images-per-id", type=int, default=20, help="DATA.SYNTHETIC.IMAGES_PER_ID")
    parser.add_argument("--img-height", type=int, default=128, help="DATA.SYNTHETIC.IMG_HEIGHT")
    parser.add_argument("--img-width", type=int, default=64, help="DATA.SYNTHETIC.IMG_WIDTH")
    parser.add_argument("--data-seed", type=int, default=0, help="DATA.SYNTHETIC.SEED")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None):
    """Trains and saves as torchreid does; returns torchreid's engine (its final test has run)."""
    args = parse_args(argv)
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchreid's note that its Cython evaluator is missing
        from torchreid import reid as torchreid

    from reid.data.synthetic import SyntheticReID

    synthetic = functools.partial(
        SyntheticReID, num_ids=args.num_ids, num_cams=args.num_cams, images_per_id=args.images_per_id,
        height=args.img_height, width=args.img_width, seed=args.data_seed,
    )
    if "synthetic_example" not in torchreid.data.datasets.__image_datasets:
        torchreid.data.register_image_dataset("synthetic_example", synthetic)
    torch.manual_seed(args.seed)
    datamanager = torchreid.data.ImageDataManager(
        root=args.root, sources="synthetic_example", height=args.height, width=args.width,
        batch_size_train=args.batch_size, batch_size_test=64, workers=0, transforms=["random_flip"],
    )
    model = torchreid.models.build_model(
        args.arch, num_classes=datamanager.num_train_pids, loss="softmax", pretrained=False,
    )
    optimizer = torchreid.optim.build_optimizer(model, optim="adam", lr=args.lr)
    scheduler = torchreid.optim.build_lr_scheduler(optimizer, lr_scheduler="single_step", stepsize=20)
    engine = torchreid.engine.ImageSoftmaxEngine(
        datamanager, model, optimizer=optimizer, scheduler=scheduler, use_gpu=torch.cuda.is_available(),
    )
    engine.run(save_dir=args.save_dir, max_epoch=args.epochs, print_freq=20)
    return engine


if __name__ == "__main__":
    main()
