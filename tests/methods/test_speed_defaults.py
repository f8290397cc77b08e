"""The CPU speed defaults: ``precision: auto`` is bf16 mixed precision on a CPU that computes
bf16 natively and fp32 on one that does not; Adam/AdamW are fused on the CPU with the same
updates as torch's per-tensor loop, and left unfused where gradients are clipped."""

import pytest
import torch

from holomodal.methods.base import build_optimizer
from holomodal.training import auto_precision, cpu_has_native_bf16, trainer_options


@pytest.mark.parametrize("avx512_bf16, amx, native", [(False, False, False), (True, False, True), (False, True, True)])
def test_auto_precision_on_the_cpu_is_bf16_where_the_cpu_has_it_natively(monkeypatch, avx512_bf16, amx, native):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert cpu_has_native_bf16() is native
    expected = "bf16-mixed" if native else "32-true"
    assert auto_precision("cpu") == expected
    assert trainer_options({"precision": "auto", "accelerator": "cpu"})["precision"] == expected
    assert trainer_options({"precision": "bf16-mixed", "accelerator": "cpu"})["precision"] == "bf16-mixed"
    # a precision the user names is kept as it is
    assert trainer_options({"precision": "32-true", "accelerator": "cpu"})["precision"] == "32-true"


@pytest.mark.parametrize("native", [False, True])
def test_a_cuda_machine_training_on_its_cpu_decides_by_the_cpu(monkeypatch, native):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert auto_precision("auto") == "bf16-mixed"
    assert auto_precision("cpu") == ("bf16-mixed" if native else "32-true")
    assert auto_precision("mps") == "32-true"


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_fused_adam_on_the_cpu_takes_the_steps_of_the_unfused_one(name):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(17, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    twin = torch.nn.Sequential(torch.nn.Linear(17, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    twin.load_state_dict(model.state_dict())
    fused = build_optimizer(model.parameters(), name, lr=1e-2, weight_decay=1e-4)
    assert fused.defaults["fused"] is True
    loop = (torch.optim.AdamW if name == "adamw" else torch.optim.Adam)(twin.parameters(), lr=1e-2, weight_decay=1e-4,
                                                                        foreach=False)
    x, y = torch.randn(64, 17), torch.randint(0, 3, (64,))
    for _ in range(5):
        for net, opt in ((model, fused), (twin, loop)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_adam_is_fused_unless_the_trainer_or_the_method_clips_gradients():
    from types import SimpleNamespace

    from holomodal.methods.base import clips_gradients

    params = [torch.nn.Parameter(torch.zeros(3))]
    assert build_optimizer(params, "adamw", lr=1e-3, fused=False).defaults["fused"] is False
    assert not clips_gradients(SimpleNamespace(_trainer=None))
    assert not clips_gradients(SimpleNamespace(_trainer=SimpleNamespace(gradient_clip_val=None)))
    assert clips_gradients(SimpleNamespace(_trainer=SimpleNamespace(gradient_clip_val=1.0)))
    # I2M2's joint stage clips its own gradients, with no trainer setting
    assert clips_gradients(SimpleNamespace(_trainer=SimpleNamespace(gradient_clip_val=None), gradient_clip_norm=8.0))


@pytest.mark.parametrize("method, model", [("late_fusion", {}), ("i2m2", {"init": "pretrained_experts", "expert_epochs": 1})])
def test_clipped_training_under_bf16_mixed_precision_runs(covid, tmp_path, method, model):
    # Lightning's mixed precision refuses to clip a fused optimiser's gradients: such runs
    # take the unfused Adam and train
    from tiny import TINY_ENCODERS, small_schema

    from holomodal.estimator import Classifier

    schema = small_schema(covid.schema, drop=("text",))
    names = schema.column_names
    trainer = {"max_epochs": 2, "enable_progress_bar": False, "accelerator": "cpu", "precision": "bf16-mixed"}
    if method == "late_fusion":
        trainer["gradient_clip_val"] = 1.0
    encoders = {m: TINY_ENCODERS[m] for m in ("image", "tabular")}
    clf = Classifier(schema, method=method, model={"encoders": encoders, **model}, batch_size=16, trainer=trainer,
                     loggers=[], run_dir=tmp_path / method)
    clf.fit(covid.split("train")[names].iloc[:48], covid.split("val")[names].iloc[:16])
    proba = clf.predict_proba(covid.split("test")[names].iloc[:8])
    assert proba.shape == (8, clf.preprocessor_.num_classes) and torch.isfinite(torch.from_numpy(proba)).all()
