import glob
import os

import pytest

from reid.config import ConfigError, config_to_dict, get_default_config, load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_yaml_then_command_line(tmp_path):
    path = write(tmp_path, "OPTIM:\n  MAX_EPOCH: 7\n  LR: 0.5\nMODEL:\n  BACKBONE: resnet18\n")
    cfg = load_config(path, ["OPTIM.LR", "0.25", "OUTPUT_DIR", "out/x", "DATA.SOURCES", "['a', 'b']"])
    assert cfg.OPTIM.MAX_EPOCH == 7
    assert cfg.OPTIM.LR == 0.25
    assert cfg.MODEL.BACKBONE == "resnet18"
    assert cfg.OUTPUT_DIR == "out/x"
    assert cfg.DATA.SOURCES == ["a", "b"]
    assert cfg.MODEL.NUM_STRIPES == get_default_config().MODEL.NUM_STRIPES
    assert cfg.is_frozen()


def test_unknown_key_in_file_names_closest(tmp_path):
    path = write(tmp_path, "OPTIM:\n  MAX_EPOHC: 3\n")
    with pytest.raises(ConfigError, match=r"OPTIM.MAX_EPOHC.*did you mean 'OPTIM.MAX_EPOCH'"):
        load_config(path)


def test_unknown_key_on_command_line_names_closest():
    with pytest.raises(ConfigError, match=r"MODEL.BACKBOEN.*did you mean 'MODEL.BACKBONE'"):
        load_config(None, ["MODEL.BACKBOEN", "resnet18"])


@pytest.mark.parametrize(
    "opts, message",
    [
        (["OPTIM.MAX_EPOCH", "two"], "must be an integer"),
        (["MODEL.PRETRAINED", "maybe"], "true or false"),
        (["MODEL.BACKBONE", "vgg16"], "must be one of"),
        (["MODEL.PADDING_MODE", "circular"], "MODEL.PADDING_MODE must be one of"),
        (["SAMPLER.BATCH_SIZE_TRAIN", "30"], "multiple of"),
        (["OPTIM.LR"], "KEY VALUE pairs"),
        (["DATA", "x"], "is a section"),
    ],
)
def test_bad_values(opts, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, opts)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml"))))
def test_shipped_configs_parse(path):
    cfg = load_config(path)
    assert config_to_dict(cfg)["OUTPUT_DIR"] == cfg.OUTPUT_DIR


def test_every_default_key_is_commented():
    source = open(os.path.join(REPO, "reid", "config", "__init__.py"), encoding="utf-8").read().splitlines()
    for i, line in enumerate(source):
        if line.startswith("_C.") and "= CN()" not in line:
            above = source[i - 1].strip()
            assert above.startswith("#") or source[i - 1].startswith("_C."), f"no comment above: {line}"


def test_allowed_values_come_from_their_components():
    """Each key's values are declared once, by the component that owns them; the config reads them."""
    from reid.config import allowed_values
    from reid.models.torchreid_net import TORCHREID_ARCHS

    assert allowed_values() == {
        "MODEL.NAME": ("avsl", "pcb", "torchreid"),
        "MODEL.TORCHREID.ARCH": TORCHREID_ARCHS,
        "MODEL.BACKBONE": ("resnet18", "resnet34", "resnet50", "mobilenet_v2"),
        "MODEL.TEST_FEATURE": ("pooled", "reduced"),
        "MODEL.PADDING_MODE": ("zeros", "reflect", "replicate"),
        "OPTIM.NAME": ("sgd", "adam"),
        "OPTIM.SCHEDULER": ("single_step", "multi_step", "cosine"),
        "TEST.DIST_METRIC": ("euclidean", "cosine"),
        "DATA.ON_BAD_IMAGE": ("error", "skip"),
        "DATA.FOLDER.LAYOUT": ("market1501", "lists"),
        "SAMPLER.TRAIN": ("RandomIdentitySampler", "RandomSampler"),
        "SAM.FORM": ("siamese", "triplet", "quadruplet"),
        "SAM.OBJECTIVE": ("erase", "printed"),
        "SAM.BN_MODE": ("eval", "train"),
        "LOSS.METRIC": ("triplet", "contrastive", "quadruplet", "margin"),
        "AVSL.LOSS": ("triplet", "proxy_anchor", "margin"),
        "TRAIN.AMP": ("off", "bf16", "fp16"),
        "DIST.BACKEND": ("auto", "nccl", "gloo"),
    }


def test_model_capabilities_are_checked_by_the_builder_registry():
    import pytest

    from reid.config import ConfigError, load_config
    from reid.builders import model_recipe

    cfg = load_config(None, ["MODEL.NAME", "avsl", "SAM.ENABLED", "True"])
    with pytest.raises(ConfigError, match="SAM.ENABLED needs MODEL.NAME pcb or torchreid, got 'avsl'"):
        model_recipe(cfg)
    with pytest.raises(ConfigError, match="AVSL.LEVELS: levels must be distinct and bottom-up"):
        load_config(None, ["AVSL.LEVELS", "[layer3, layer2]", "AVSL.LEVEL_WEIGHTS", "[1.0, 1.0]"])


# -- every value is checked at load, with the key, the value and what is allowed -----------------


def _refusals() -> list[tuple[list[str], str]]:
    """The cases of tests/config_refusals.yaml: overrides and the expected message."""
    import yaml

    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "config_refusals.yaml"), encoding="utf-8") as f:
        return [(case["opts"], case["message"]) for case in yaml.safe_load(f)]


@pytest.mark.parametrize("opts, message", _refusals())
def test_values_are_range_checked(opts, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, opts)


def test_transform_names_are_torchreids_and_case_insensitive():
    """torchreid's build_transforms ignores names it does not know: the config refuses them, with the
    list read from torchreid's own source kept in sync by this test."""
    import inspect
    import re

    from torchreid.reid.data.transforms import build_transforms

    from reid.config import TORCHREID_TRANSFORMS

    known = set(re.findall(r"'(\w+)' in transforms", inspect.getsource(build_transforms)))
    assert set(TORCHREID_TRANSFORMS) == known
    cfg = load_config(None, ["DATA.TRANSFORMS", "['Random_Flip', 'random_erase']"])
    assert cfg.DATA.TRANSFORMS == ["Random_Flip", "random_erase"]
    assert load_config(None, ["DATA.TRANSFORMS", "[]"]).DATA.TRANSFORMS == []


def test_scheduler_specific_stepsize():
    assert load_config(None, ["OPTIM.SCHEDULER", "multi_step", "OPTIM.STEPSIZE", "[10, 20]"]).OPTIM.STEPSIZE == [10, 20]
    assert load_config(None, ["OPTIM.SCHEDULER", "cosine", "OPTIM.STEPSIZE", "[]"]).OPTIM.STEPSIZE == []


def test_synthetic_keys_are_checked_only_when_the_synthetic_set_is_used():
    load_config(None, ["DATA.SOURCES", "[dukemtmc_reid]", "DATA.SYNTHETIC.NUM_CAMS", "1"])
    with pytest.raises(ConfigError, match="DATA.SYNTHETIC.NUM_CAMS"):
        load_config(None, ["DATA.SOURCES", "[dukemtmc_reid]", "DATA.TARGETS", "[synthetic]",
                           "DATA.SYNTHETIC.NUM_CAMS", "1"])


def test_input_size_against_the_trunk_map():
    """The layer4 map has ceil(HEIGHT / 16) rows with LAST_STRIDE 1 and ceil(HEIGHT / 32) with 2;
    reflect padding needs every padded map to be at least 2 x 2; PCB needs a row per stripe."""
    from reid.cli.common import load_checked_config

    reflect = ["MODEL.PADDING_MODE", "reflect", "DATA.HEIGHT", "64", "DATA.WIDTH", "32", "MODEL.LAST_STRIDE", "2",
               "MODEL.NUM_STRIPES", "2"]
    with pytest.raises(ConfigError, match=r"MODEL.PADDING_MODE reflect needs a layer4 map of at least 2 x 2.*"
                                          r"DATA.HEIGHT 64 x DATA.WIDTH 32.*MODEL.LAST_STRIDE 2.*2 x 1"):
        load_checked_config(None, reflect)
    load_checked_config(None, [*reflect[:1], "replicate", *reflect[2:]])
    # AVSL runs the trunk up to its top level only: layer3's map of 64 x 32 is 4 x 2
    load_checked_config(None, [*reflect, "MODEL.NAME", "avsl", "AVSL.LEVELS", "[layer2, layer3]",
                               "AVSL.LEVEL_WEIGHTS", "[1.0, 1.0]"])
    with pytest.raises(ConfigError, match=r"MODEL.PADDING_MODE reflect needs a layer4 map"):
        load_checked_config(None, [*reflect, "MODEL.NAME", "avsl"])
    with pytest.raises(ConfigError, match=r"MODEL.NUM_STRIPES 12 needs at least 12 rows in the layer4 map, which "
                                          r"has 6 \(DATA.HEIGHT 96, MODEL.LAST_STRIDE 1: ceil\(HEIGHT / 16\) rows\)"):
        load_checked_config(None, ["DATA.HEIGHT", "96", "MODEL.NUM_STRIPES", "12"])
    assert load_checked_config(None, ["DATA.HEIGHT", "96", "MODEL.NUM_STRIPES", "6"]).MODEL.NUM_STRIPES == 6
    # AVSL has no stripes: the key is not its business
    load_checked_config(None, ["MODEL.NAME", "avsl", "DATA.HEIGHT", "64", "MODEL.NUM_STRIPES", "12"])


def test_feature_map_size_matches_the_trunk():
    import torch

    from reid.models.trunks import STAGES, build_trunk, feature_map_size

    for last_stride in (1, 2):
        trunk = build_trunk("resnet18", last_stride, False, "").eval()
        for height, width in ((17, 33), (64, 32), (96, 48), (100, 65)):
            with torch.no_grad():
                x = trunk.maxpool(trunk.relu(trunk.bn1(trunk.conv1(torch.zeros(1, 3, height, width)))))
                for stage in STAGES:
                    x = getattr(trunk, stage)(x)
                    assert feature_map_size(height, width, last_stride, stage) == tuple(x.shape[-2:]), stage


def test_model_keys_of_the_recipes_are_config_keys_their_options_read():
    """Each recipe's model keys (compared with a checkpoint's config before its weights are loaded)
    exist, and each one but MODEL.NAME changes the options its model is built with."""
    from reid.builders import MODEL_RECIPES

    changed = {"MODEL.BACKBONE": "resnet34", "MODEL.LAST_STRIDE": 2, "MODEL.PADDING_MODE": "replicate",
               "MODEL.NUM_STRIPES": 3, "MODEL.REDUCED_DIM": 8, "AVSL.LEVELS": ["layer3", "layer4"],
               "AVSL.EMBED_DIM": 32, "AVSL.TOPK": 8, "AVSL.LOSS": "proxy_anchor",
               "MODEL.TORCHREID.ARCH": "resnet18"}
    for name, recipe in MODEL_RECIPES.items():
        assert recipe.model_keys[0] == "MODEL.NAME"
        for key in recipe.model_keys[1:]:
            cfg = get_default_config()
            before = recipe.model_options(cfg)
            *groups, leaf = key.split(".")
            node = cfg
            for group in groups:
                node = node[group]
            node[leaf] = changed[key]
            assert recipe.model_options(cfg) != before, (name, key)
