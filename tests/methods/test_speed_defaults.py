"""The CPU speed defaults: ``precision: auto`` stays fp32 on the CPU (bf16 is opt-in there) and
reports where the CPU computes bf16 natively; Adam/AdamW are fused on the CPU with the same
updates as torch's per-tensor loop."""

import pytest
import torch

from holomodal.methods.base import build_optimizer
from holomodal.training import auto_precision, cpu_has_native_bf16, trainer_options


@pytest.mark.parametrize("avx512_bf16, amx, native", [(False, False, False), (True, False, True), (False, True, True)])
def test_auto_precision_on_the_cpu_is_fp32_and_native_bf16_is_detected(monkeypatch, avx512_bf16, amx, native):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert cpu_has_native_bf16() is native
    assert auto_precision("cpu") == "32-true"
    assert trainer_options({"precision": "auto", "accelerator": "cpu"})["precision"] == "32-true"
    assert trainer_options({"precision": "bf16-mixed", "accelerator": "cpu"})["precision"] == "bf16-mixed"
    # a precision the user names is kept as it is
    assert trainer_options({"precision": "32-true", "accelerator": "cpu"})["precision"] == "32-true"


def test_a_cuda_machine_training_on_its_cpu_decides_by_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert auto_precision("auto") == "bf16-mixed"
    assert auto_precision("cpu") == "32-true"


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
