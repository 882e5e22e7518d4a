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
    source = open(os.path.join(REPO, "reid", "config.py"), encoding="utf-8").read().splitlines()
    for i, line in enumerate(source):
        if line.startswith("_C.") and "= CN()" not in line:
            above = source[i - 1].strip()
            assert above.startswith("#") or source[i - 1].startswith("_C."), f"no comment above: {line}"


def test_allowed_values_come_from_their_components():
    """Each key's values are declared once, by the component that owns them; the config reads them."""
    from reid.config import allowed_values

    assert allowed_values() == {
        "MODEL.NAME": ("avsl", "pcb"),
        "MODEL.BACKBONE": ("resnet18", "resnet34", "resnet50"),
        "MODEL.TEST_FEATURE": ("pooled", "reduced"),
        "MODEL.PADDING_MODE": ("zeros", "reflect", "replicate"),
        "OPTIM.NAME": ("sgd", "adam"),
        "OPTIM.SCHEDULER": ("single_step", "multi_step", "cosine"),
        "TEST.DIST_METRIC": ("euclidean", "cosine"),
        "DATA.ON_BAD_IMAGE": ("error", "skip"),
        "SAMPLER.TRAIN": ("RandomIdentitySampler", "RandomSampler"),
        "SAM.FORM": ("siamese", "triplet", "quadruplet"),
        "SAM.BN_MODE": ("eval", "train"),
        "AVSL.LOSS": ("triplet", "proxy_anchor"),
        "TRAIN.AMP": ("off", "bf16", "fp16"),
        "DIST.BACKEND": ("auto", "nccl", "gloo"),
    }


def test_model_capabilities_are_checked_by_the_builder_registry():
    import pytest

    from reid.config import ConfigError, load_config
    from reid.builders import model_recipe

    cfg = load_config(None, ["MODEL.NAME", "avsl", "SAM.ENABLED", "True"])
    with pytest.raises(ConfigError, match="SAM.ENABLED needs MODEL.NAME pcb, got 'avsl'"):
        model_recipe(cfg)
    with pytest.raises(ConfigError, match="AVSL.LEVELS: levels must be distinct and bottom-up"):
        load_config(None, ["AVSL.LEVELS", "[layer3, layer2]", "AVSL.LEVEL_WEIGHTS", "[1.0, 1.0]"])
