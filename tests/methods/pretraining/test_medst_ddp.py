"""MedST pre-training and its linear-probe classifier under Lightning's DDP (two CPU
processes, gloo): the sequence batches are split across processes, no parameter goes unused,
and both processes end with identical weights."""

import subprocess
import sys
import textwrap

import torch

SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from holomodal import Classifier
    from holomodal.data import load_dataset
    from holomodal.pretraining import Pretrainer

    out = sys.argv[1]
    bundle = load_dataset("covid_cxr", studies=True, image_size=32)
    tiny = {"image": {"model_name": "vit_tiny_patch16_224", "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2},
            "text": {"hidden_size": 32, "layers": 1, "heads": 2, "intermediate_size": 64}, "embed_dim": 16, "hidden_dim": 32}
    trainer = {"max_epochs": 1, "limit_train_batches": 2, "accelerator": "cpu", "devices": 2, "strategy": "ddp",
               "enable_progress_bar": False}
    pre = Pretrainer(bundle.schema, method="medst", model=tiny, batch_size=4, trainer=trainer, run_dir=out + "/medst", loggers=[])
    pre.fit(bundle.split("train"))
    rank = pre.module_.trainer.global_rank
    medst = {k: v.detach().clone() for k, v in pre.module_.named_parameters()}
    clf = Classifier(bundle.schema, method="medst", model={"checkpoint": out + "/medst", "finetune": "full"}, batch_size=8,
                     loggers=[], run_dir=out + "/probe", trainer=trainer)
    clf.fit(bundle.split("train"))
    probe = {k: v.detach().clone() for k, v in clf.model_.named_parameters()}
    torch.save({"medst": medst, "probe": probe, "steps": clf.model_.trainer.global_step,
                "temporal": float(pre.metrics_["train/temporal"])}, f"{out}/rank{rank}.pt")
    """
)


def test_medst_pretraining_and_classifier_under_ddp(tmp_path):
    script = tmp_path / "ddp_medst.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["steps"] == r1["steps"] == 2 and r0["temporal"] > 0
    for part in ("medst", "probe"):
        assert r0[part].keys() == r1[part].keys()
        for k in r0[part]:
            torch.testing.assert_close(r0[part][k], r1[part][k], rtol=0, atol=0, msg=f"{part} {k} differs between ranks")
