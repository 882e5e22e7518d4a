"""torchreid's inherited ``Engine`` API on our engines: refused with an error naming our method,
or routed to our code."""

import pytest
import torch
from torchreid.reid.engine import Engine

from reid.engine import AVSLEngine, PCBEngine, ReidEngine, SAMEngine
from tests.engine.toy_engine import make_toy_engine


@pytest.mark.parametrize("cls", [ReidEngine, PCBEngine, SAMEngine, AVSLEngine])
def test_every_engine_overrides_torchreids_loop_and_evaluation(cls):
    for name in ("run", "train", "test", "save_model"):
        assert getattr(cls, name) is not getattr(Engine, name), name


def test_torchreid_train_names_run(tmp_path):
    engine = make_toy_engine(tmp_path)
    with pytest.raises(NotImplementedError, match=r"ToyEngine.train\(\).*run\(max_epoch=\.\.\.\).*train_epoch\(\)"):
        engine.train(print_freq=10, fixbase_epoch=0, open_layers=None)
    with pytest.raises(NotImplementedError, match=r"run\("):
        engine.train()


def test_torchreid_test_names_evaluate(tmp_path):
    engine = make_toy_engine(tmp_path)
    with pytest.raises(NotImplementedError, match=r"ToyEngine.test\(\).*evaluate\(\)"):
        engine.test(dist_metric="cosine", ranks=[1, 5])
    with pytest.raises(NotImplementedError, match=r"evaluate\(\)"):
        engine.test()


def test_torchreid_run_arguments_are_refused_before_any_work(tmp_path):
    engine = make_toy_engine(tmp_path / "out")
    with pytest.raises(TypeError, match=r"max_epoch must be an int, got 'log'.*not torchreid's run\(save_dir"):
        engine.run("log", 60)  # torchreid's positional order
    with pytest.raises(TypeError, match=r"save_dir \(torchreid's; use the engine's output_dir\)"):
        engine.run(max_epoch=1, save_dir="log")
    with pytest.raises(TypeError, match=r"dist_metric \(torchreid's; use eval_options\), "
                                        r"visrank \(torchreid's; not supported\), colour \(unknown\)"):
        engine.run(1, dist_metric="cosine", visrank=True, colour="red")
    assert not (tmp_path / "out").exists()


def test_torchreid_save_model_writes_our_checkpoint(tmp_path):
    engine = make_toy_engine(tmp_path)
    engine.save_model(epoch=4, rank1=0.5, save_dir=str(tmp_path / "ignored"), is_best=True)
    state = torch.load(engine.checkpoint_path, weights_only=True)
    assert state["epoch"] == 5  # torchreid passes the 0-based epoch
    assert all(torch.equal(state["model"][k], v) for k, v in engine.model.state_dict().items())
    assert not (tmp_path / "ignored").exists()


def test_extract_features_is_one_batch_forward(tmp_path):
    engine = make_toy_engine(tmp_path)
    images = engine.train_loader[0]["img"]
    assert torch.equal(engine.extract_features(images), engine.model(images))
