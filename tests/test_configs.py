"""The shipped configs as the papers' comparisons need them: every config with similarity mining has
an ablation baseline that differs from it in ``SAM.ENABLED`` alone (and where the run writes), and
configs that expect ImageNet weights refuse to train without them."""

import glob
import os

import pytest

from reid.config import _all_differences, config_to_dict, load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# config with similarity mining -> its baseline (same file, SAM.ENABLED false)
ABLATION_PAIRS = {
    "pcb_sam_duke.yaml": "pcb_sam_duke_baseline.yaml",
    "pcb_sam_cuhk03.yaml": "pcb_sam_cuhk03_baseline.yaml",
    "sam_cub.yaml": "sam_cub_baseline.yaml",
    "sam_cars.yaml": "sam_cars_baseline.yaml",
    "sam_sop.yaml": "sam_sop_baseline.yaml",
    "synthetic_pcb_sam.yaml": "synthetic_pcb.yaml",
    "synthetic_retrieval.yaml": "synthetic_retrieval_baseline.yaml",
}


def _config(name):
    return load_config(os.path.join(REPO, "configs", name))


def test_every_config_with_similarity_mining_has_a_pair():
    mining = sorted(
        os.path.basename(path) for path in glob.glob(os.path.join(REPO, "configs", "*.yaml"))
        if _config(os.path.basename(path)).SAM.ENABLED
    )
    # the SAM.OBJECTIVE ablation of the demo is a variant of the study, not a shipped file
    assert mining == sorted(ABLATION_PAIRS), "a config with SAM.ENABLED needs its baseline in ABLATION_PAIRS"


@pytest.mark.parametrize("mining, baseline", sorted(ABLATION_PAIRS.items()))
def test_ablation_pair_differs_in_sam_enabled_only(mining, baseline):
    with_sam, without = _config(mining), _config(baseline)
    differences = {d.key: (d.old, d.new) for d in _all_differences(config_to_dict(with_sam), without)}
    assert differences.pop("SAM.ENABLED") == (True, False)
    assert set(differences) <= {"OUTPUT_DIR"}, differences
    assert with_sam.OUTPUT_DIR != without.OUTPUT_DIR


# AVSL with ProxyAnchor -> the same config with the paper's other base loss, Wu et al.'s margin loss
BASE_LOSS_PAIRS = {f"avsl_{data}.yaml": f"avsl_margin_{data}.yaml" for data in ("cub", "cars", "sop")}


@pytest.mark.parametrize("proxy, margin", sorted(BASE_LOSS_PAIRS.items()))
def test_avsl_base_loss_pair_differs_in_the_loss_only(proxy, margin):
    with_proxies, with_margin = _config(proxy), _config(margin)
    differences = {d.key: (d.old, d.new) for d in _all_differences(config_to_dict(with_proxies), with_margin)}
    assert differences.pop("AVSL.LOSS") == ("proxy_anchor", "margin")
    assert set(differences) <= {"OUTPUT_DIR"}, differences
    assert with_proxies.OUTPUT_DIR != with_margin.OUTPUT_DIR
    # the margin loss at Wu et al.'s values: margin alpha 0.2, boundary beta from 1.2
    assert (with_margin.LOSS.MARGIN_ALPHA, with_margin.LOSS.MARGIN_BETA) == (0.2, 1.2)


def test_the_comparison_key_is_the_only_one(tmp_path):
    """The check above is not vacuous: one more changed key is seen."""
    changed = load_config(os.path.join(REPO, "configs", "synthetic_pcb.yaml"), ["OPTIM.LR", "0.5"])
    keys = {d.key for d in _all_differences(config_to_dict(_config("synthetic_pcb_sam.yaml")), changed)}
    assert keys == {"SAM.ENABLED", "OPTIM.LR", "OUTPUT_DIR"}


PAPER_CONFIGS = sorted(
    os.path.basename(path) for path in glob.glob(os.path.join(REPO, "configs", "*.yaml"))
    if os.path.basename(path).startswith(("pcb_", "avsl_", "sam_"))
)


def test_paper_configs_are_found():
    assert len(PAPER_CONFIGS) >= 15 and "pcb_sam_duke_baseline.yaml" in PAPER_CONFIGS


@pytest.mark.parametrize("name", PAPER_CONFIGS + ["synthetic_pcb.yaml", "synthetic_pcb_sam.yaml", "synthetic_avsl.yaml"])
def test_configs_that_expect_imagenet_weights_refuse_to_train_without_them(name, tmp_path, monkeypatch):
    from reid.builders import require_pretrained_weights
    from reid.config import ConfigError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cfg = _config(name)
    assert cfg.MODEL.PRETRAINED
    with pytest.raises(ConfigError, match="no ImageNet weights for .* were found .* MODEL.PRETRAINED False"):
        require_pretrained_weights(cfg)
    # MODEL.PRETRAINED False is the explicit way to train from scratch
    require_pretrained_weights(load_config(os.path.join(REPO, "configs", name), ["MODEL.PRETRAINED", "False"]))


def test_from_scratch_configs_say_so():
    for name in ("synthetic_pcb_scratch.yaml", "synthetic_retrieval.yaml", "synthetic_retrieval_baseline.yaml"):
        assert not _config(name).MODEL.PRETRAINED, name
