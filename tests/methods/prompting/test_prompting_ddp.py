"""CLIP pre-training and DCP under Lightning's DDP (two CPU processes, gloo): the contrastive
loss gathers every process's pairs, every trainable prompt gets a gradient (no unused
parameter), and both processes end with identical weights."""

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
    bundle = load_dataset("coco_mini")
    trainer = {"max_epochs": 1, "limit_train_batches": 2, "accelerator": "cpu", "devices": 2, "strategy": "ddp",
               "enable_progress_bar": False}
    pre = Pretrainer(bundle.schema, method="clip", batch_size=8, trainer=trainer, run_dir=out + "/clip", loggers=[])
    pre.fit(bundle.split("train"))
    rank = pre.module_.trainer.global_rank
    clip_state = {k: v.detach().clone() for k, v in pre.module_.state_dict().items()}
    clf = Classifier(bundle.schema, method="dcp", model={"backbone": out + "/clip"}, batch_size=8, loggers=[],
                     run_dir=out + "/dcp", trainer=trainer, missing=["modality:0.7:both"])
    clf.fit(bundle.split("train"))
    state = {k: v.detach().clone() for k, v in clf.model_.state_dict().items()}
    torch.save({"clip": clip_state, "dcp": state, "steps": clf.model_.trainer.global_step}, f"{out}/rank{rank}.pt")
    """
)


def test_clip_pretraining_and_dcp_under_ddp(tmp_path):
    script = tmp_path / "ddp_clip.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["steps"] == r1["steps"] == 2
    for part in ("clip", "dcp"):
        assert r0[part].keys() == r1[part].keys()
        for k in r0[part]:
            torch.testing.assert_close(r0[part][k], r1[part][k], rtol=0, atol=0, msg=f"{part} {k} differs between ranks")
