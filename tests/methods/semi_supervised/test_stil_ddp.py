"""STiL under Lightning's DDP strategy on two CPU processes (gloo): prototypes agree."""

import subprocess
import sys
import textwrap

import torch

SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from holomodal.data import load_dataset
    from holomodal.estimator import Classifier

    out = sys.argv[1]
    bundle = load_dataset("av_digits")
    train = bundle.split("train").sample(160, random_state=0).reset_index(drop=True)
    enc = {"image": {"name": "lenet", "channels": 2, "blocks": 1}, "audio": {"name": "lenet", "channels": 2, "blocks": 2}}
    model = {"encoders": enc, "dim": 16, "heads": 2, "projection_dim": 8, "start_epoch": 0, "threshold": 0.0}
    clf = Classifier(bundle.schema, method="stil", model=model, batch_size=32, loggers=[], run_dir=out + "/run",
                     trainer={"max_epochs": 2, "accelerator": "cpu", "devices": 2, "strategy": "ddp",
                              "enable_progress_bar": False})
    clf.fit(train.iloc[:40], unlabeled=train.iloc[40:])
    rank = clf.model_.trainer.global_rank
    torch.save({"prototypes": clf.model_.bank.prototypes.clone(), "steps": clf.model_.trainer.global_step,
                "weight": clf.model_.network.multimodal_head.weight.detach().clone()}, f"{out}/rank{rank}.pt")
    """
)


def test_stil_prototypes_are_identical_on_both_ranks(tmp_path):
    script = tmp_path / "stil_ddp.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert r0["steps"] == r1["steps"] > 0
    assert r0["prototypes"].abs().sum() > 0  # built from the sums of both processes' rows
    torch.testing.assert_close(r0["prototypes"], r1["prototypes"], rtol=0, atol=0)
    torch.testing.assert_close(r0["weight"], r1["weight"], rtol=0, atol=0)
