"""Two CPU processes under Lightning's DDP strategy (gloo) end with identical weights."""

import subprocess
import sys
import textwrap

import torch


SCRIPT = textwrap.dedent(
    """
    import sys, torch, lightning as L
    from holomodal.data import load_dataset
    from holomodal.estimator import Classifier

    out = sys.argv[1]
    bundle = load_dataset("av_digits")
    train = bundle.split("train").sample(64, random_state=0)  # the split is sorted by digit
    enc = {"image": {"name": "lenet", "channels": 2, "blocks": 1}, "audio": {"name": "lenet", "channels": 2, "blocks": 1}}
    clf = Classifier(bundle.schema, model={"encoders": enc}, batch_size=16, loggers=[], run_dir=out + "/run",
                     trainer={"max_epochs": 1, "limit_train_batches": 2, "accelerator": "cpu", "devices": 2,
                              "strategy": "ddp", "enable_progress_bar": False})
    clf.fit(train)
    rank = clf.model_.trainer.global_rank
    state = {k: v.detach().clone() for k, v in clf.model_.state_dict().items()}
    torch.save({"state": state, "steps": clf.model_.trainer.global_step}, f"{out}/weights_rank{rank}.pt")
    """
)


def test_ddp_two_processes_hold_identical_weights(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "weights_rank0.pt")
    r1 = torch.load(tmp_path / "weights_rank1.pt")
    assert r0["steps"] == r1["steps"] == 2
    assert r0["state"].keys() == r1["state"].keys()
    for k in r0["state"]:
        torch.testing.assert_close(r0["state"][k], r1["state"][k], rtol=0, atol=0, msg=f"parameter {k} differs between ranks")
