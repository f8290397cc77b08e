"""I2M2: the product of experts, and the two stages of ``init: pretrained_experts`` (each
expert a run of its own, then the joint fine-tuning from their best checkpoints) on real
av_digits rows with tiny LeNets."""

import json

import pandas as pd
import pytest
import torch
import yaml

from holomodal.batch import Batch
from holomodal.errors import ConfigError, RunFolderError
from holomodal.estimator import Classifier
from holomodal.methods import ModelContext, create_method, lightning_class
from holomodal.methods.i2m2 import I2M2


def _context():
    specs = {
        "image": {"channels": 1, "size": 28, "mean": [0.1], "std": [0.3]},
        "audio": {"n_mels": 20, "frames": 40},
    }
    return ModelContext(specs, {"image": "image", "audio": "audio"}, num_classes=10, task="multiclass")


def _batch(n=5):
    g = torch.Generator().manual_seed(0)
    return Batch(
        inputs={
            "image": {"pixels": torch.randint(0, 255, (n, 1, 28, 28), dtype=torch.uint8, generator=g)},
            "audio": {"spectrogram": torch.randn(n, 1, 20, 40, generator=g)},
        },
        present={"image": torch.ones(n, dtype=torch.bool), "audio": torch.tensor([True, False, True, True, False])},
        target=torch.arange(n) % 10,
    ).zero_missing()


def _model():
    enc = {"image": {"name": "lenet", "channels": 2, "blocks": 2}, "audio": {"name": "lenet", "channels": 2, "blocks": 2}}
    torch.manual_seed(0)
    return create_method("i2m2", _context(), encoders=enc, head={"hidden": 16}).eval()


def test_combined_prediction_is_normalised_product_of_expert_distributions():
    model, batch = _model(), _batch()
    with torch.no_grad():
        experts = model.expert_logits(batch)
        combined = model.probabilities(model(batch))
    product = torch.ones_like(combined)
    for z in experts.values():
        product = product * torch.softmax(z, dim=-1)
    product = product / product.sum(dim=-1, keepdim=True)
    assert set(experts) == {"image", "audio", "inter"}
    torch.testing.assert_close(combined, product, atol=1e-6, rtol=1e-5)


def test_absent_modality_intra_expert_contributes_nothing():
    model, batch = _model(), _batch()
    with torch.no_grad():
        experts = model.expert_logits(batch)
    absent = ~batch.present["audio"]
    assert torch.all(experts["audio"][absent] == 0)
    assert torch.all(experts["audio"][~absent].abs().sum(dim=1) > 0)


def test_intra_only_baseline_trains_each_expert_on_its_own_loss():
    model = create_method(
        "i2m2", _context(), encoders={"image": {"name": "lenet", "channels": 2, "blocks": 2}, "audio": {"name": "lenet", "channels": 2, "blocks": 2}},
        init="pretrained_experts", expert_epochs=2, joint=False,
    )
    batch = _batch()
    assert model.training_experts_alone and not model.expert_fits()
    model.training_loss(batch).backward()
    # the image expert's gradient does not depend on the audio expert: training alone
    grads = {n: p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters()}
    assert all(grads.values())


def test_regression_prediction_is_the_precision_weighted_mean_of_present_experts():
    ctx = ModelContext(_context().input_specs, _context().modality_types, num_classes=1, task="regression")
    enc = {"image": {"name": "lenet", "channels": 2, "blocks": 2}, "audio": {"name": "lenet", "channels": 2, "blocks": 2}}
    torch.manual_seed(0)
    model = create_method("i2m2", ctx, encoders=enc, head={"hidden": 16}).eval()
    with torch.no_grad():
        model.log_variance["image"].fill_(-1.0)
        model.log_variance["audio"].fill_(0.5)
    batch = _batch()
    batch.target = torch.randn(len(batch))
    with torch.no_grad():
        means = {k: v.reshape(-1) for k, v in model.expert_logits(batch).items()}
        out = model(batch).reshape(-1)
    lam = {k: torch.exp(-model.log_variance[k]).detach() for k in means}
    audio = batch.present["audio"].float()
    expected = (lam["image"] * means["image"] + lam["audio"] * audio * means["audio"] + lam["inter"] * means["inter"]) / \
        (lam["image"] + lam["audio"] * audio + lam["inter"])
    torch.testing.assert_close(out, expected)
    # the Gaussian NLL trains the variances too
    model.train()
    model.training_loss(batch).backward()
    assert all(p.grad is not None and p.grad.abs() > 0 for p in model.log_variance.values())


# ---- init: pretrained_experts, fitted by the estimator ---------------------------------------
QUIET = {"enable_progress_bar": False, "accelerator": "cpu"}
TINY = {"image": {"name": "lenet", "channels": 2, "blocks": 2}, "audio": {"name": "lenet", "channels": 2, "blocks": 3}}
RUN_OPTIM = {"name": "adamw", "lr": 0.02, "weight_decay": 0.0}
# 48 training rows in batches of 16 (the last incomplete batch dropped): 3 steps an epoch
STEPS_PER_EPOCH = 3


@pytest.fixture(scope="module")
def rows(av_digits):
    """(schema, train, val): 48 training and 24 validation rows of av_digits."""
    train = av_digits.split("train").sample(48, random_state=0).reset_index(drop=True)
    return av_digits.schema, train, av_digits.split("val").sample(24, random_state=0).reset_index(drop=True)


def _recording_fit(rows, run_dir, model, trainer=None):
    """(classifier, record) of a staged fit. ``record`` holds what the joint run starts from
    (its experts' weights and its optimiser's settings, at on_fit_start) and every gradient
    clipping of the joint run: (requested value, algorithm, gradient norm before, after)."""
    record = {"clips": []}

    def on_fit_start(self):
        record["start"] = {m: {k: v.detach().clone() for k, v in e.state_dict().items()} for m, e in self.intra.items()}
        if self.inter is not None:
            record["start"]["inter"] = {k: v.detach().clone() for k, v in self.inter.state_dict().items()}
        opt = self.trainer.optimizers[0]
        record["optimizer"] = (type(opt).__name__, [(g["lr"], g["weight_decay"]) for g in opt.param_groups])

    def grad_norm(module):
        norms = [p.grad.norm() for p in module.parameters() if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack(norms)))

    # clip_gradients is Lightning's: patched on the LightningModule form that training builds
    trained_form = lightning_class(I2M2)
    real_clip = trained_form.clip_gradients

    def clip_gradients(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        before = grad_norm(self)
        real_clip(self, optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm)
        record["clips"].append((gradient_clip_val, gradient_clip_algorithm, before, grad_norm(self)))

    schema, train, val = rows
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(I2M2, "on_fit_start", on_fit_start, raising=False)
        mp.setattr(trained_form, "clip_gradients", clip_gradients)
        clf = Classifier(schema, method="i2m2",
                         model={"encoders": TINY, "head": {"hidden": 8}, "init": "pretrained_experts", **model},
                         optim=RUN_OPTIM, batch_size=16, trainer={**QUIET, "max_epochs": 2, **(trainer or {})},
                         run_dir=run_dir, loggers=["csv"]).fit(train, val)
    return clf, record


@pytest.fixture(scope="module")
def staged(rows, tmp_path_factory):
    """(classifier, record, run folder) of a default staged fit: 2 expert epochs, 2 joint epochs."""
    run = tmp_path_factory.mktemp("i2m2") / "run"
    clf, record = _recording_fit(rows, run, {"expert_epochs": 2})
    return clf, record, run


def _epochs(run):
    return sorted(pd.read_csv(run / "metrics.csv")["epoch"].dropna().astype(int).unique().tolist())


def test_each_expert_is_a_run_of_its_own_with_its_best_checkpoint(staged):
    _, _, run = staged
    for name in ("image", "audio", "inter"):
        folder = run / "experts" / name
        assert (folder / "checkpoints" / "best.ckpt").is_file(), name
        config = yaml.safe_load((folder / "config.yaml").read_text())
        assert config["method"] == "late_fusion" and config["trainer"]["max_epochs"] == 2
        assert config["optim"] == RUN_OPTIM  # expert_optim defaults to the run's optim
        if name != "inter":
            assert config["model"]["modalities"] == [name]
        assert _epochs(folder) == [0, 1]
        assert json.loads((folder / "metrics.json").read_text())["best_checkpoint"].endswith("best.ckpt")
    # the run's own epochs are the joint ones alone, so its best epoch is a joint one
    assert _epochs(run) == [0, 1]
    assert (run / "checkpoints" / "best.ckpt").is_file()


def test_joint_run_starts_from_the_experts_best_checkpoints(staged):
    _, record, run = staged
    assert set(record["start"]) == {"image", "audio", "inter"}
    for name, weights in record["start"].items():
        best = Classifier._checkpoint_weights(run / "experts" / name / "checkpoints" / "best.ckpt")
        assert weights.keys() == best.keys(), name
        for key, value in weights.items():
            torch.testing.assert_close(value, best[key], rtol=0, atol=0, msg=f"{name}: {key}")


def test_joint_run_uses_a_tenth_of_the_lr_weight_decay_and_clipping_by_norm_8(staged):
    _, record, _ = staged
    name, groups = record["optimizer"]
    assert name == "AdamW"
    assert groups and all(g == (pytest.approx(RUN_OPTIM["lr"] / 10), pytest.approx(1e-4)) for g in groups)
    assert len(record["clips"]) == 2 * STEPS_PER_EPOCH
    for value, algorithm, before, after in record["clips"]:
        assert (value, algorithm) == (8.0, "norm")
        assert after == pytest.approx(min(before, 8.0), rel=1e-4)


def test_explicit_expert_and_joint_settings_win(rows, tmp_path):
    model = {"experts": ["inter"], "expert_epochs": 1, "expert_optim": {"lr": 0.05},
             "joint_optim": {"name": "sgd", "lr": 0.003, "weight_decay": 0.0}, "joint_gradient_clip": 1e-3}
    _, record = _recording_fit(rows, tmp_path / "run", model, {"max_epochs": 1})
    assert record["optimizer"] == ("SGD", [(pytest.approx(0.003), 0.0)])
    config = yaml.safe_load((tmp_path / "run" / "experts" / "inter" / "config.yaml").read_text())
    assert config["optim"] == {**RUN_OPTIM, "lr": 0.05} and config["trainer"]["max_epochs"] == 1
    assert sorted(p.name for p in (tmp_path / "run" / "experts").iterdir()) == ["inter"]
    assert len(record["clips"]) == STEPS_PER_EPOCH
    for value, algorithm, before, after in record["clips"]:  # a tiny norm, so every step is clipped
        assert (value, algorithm) == (1e-3, "norm") and before > 1e-3 and after == pytest.approx(1e-3, rel=1e-3)


def test_the_trainers_own_clipping_wins_over_the_joint_default(monkeypatch):
    calls = []
    monkeypatch.setattr(lightning_class(I2M2), "clip_gradients", lambda self, opt, gradient_clip_val=None, gradient_clip_algorithm=None:
                        calls.append((gradient_clip_val, gradient_clip_algorithm)))
    staged_model = create_method("i2m2", _context(), encoders=TINY, init="pretrained_experts", expert_epochs=1)
    staged_model.configure_gradient_clipping(None, None, None)
    staged_model.configure_gradient_clipping(None, 0.5, "value")  # trainer.gradient_clip_val: 0.5 by value
    create_method("i2m2", _context(), encoders=TINY).configure_gradient_clipping(None, None, None)  # scratch
    assert calls == [(8.0, "norm"), (0.5, "value"), (None, None)]


def test_a_resumed_run_skips_the_expert_fits(staged, rows, tmp_path, monkeypatch):
    import shutil

    _, _, run = staged
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    (resumed / ".holomodal-run").unlink()
    monkeypatch.setattr(I2M2, "expert_fits", lambda self: pytest.fail("the checkpoint holds the experts' weights"))
    schema, train, val = rows
    clf = Classifier(schema, method="i2m2", model={"encoders": TINY, "head": {"hidden": 8}, "init": "pretrained_experts",
                                                    "expert_epochs": 2},
                     optim=RUN_OPTIM, batch_size=16, trainer={**QUIET, "max_epochs": 3}, run_dir=resumed,
                     loggers=["csv"]).fit(train, val, resume=True)
    assert _epochs(resumed) == [0, 1, 2]
    # stopped during the expert fits: no checkpoint of its own, and a clear message
    shutil.rmtree(resumed / "checkpoints")
    with pytest.raises(RunFolderError, match="while fitting its experts"):
        clf.fit(train, val, resume=True)


def test_pretrained_experts_needs_expert_epochs():
    with pytest.raises(ConfigError, match="expert_epochs"):
        create_method("i2m2", _context(), encoders=TINY, init="pretrained_experts")
