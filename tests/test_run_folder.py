"""One run per folder: claiming a run folder is one atomic create-or-fail step, so two
processes given the same run.dir never both write it; a resume takes the folder over only
when no live process holds it (issue 10, item 9)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from holomodal.errors import RunFolderError
from holomodal.runs import CLAIM_FILE, claim_run_dir

CLAIMANT = textwrap.dedent(
    """
    import pathlib, sys, time
    from holomodal.errors import RunFolderError
    from holomodal.runs import claim_run_dir

    folder, go, hold = sys.argv[1], pathlib.Path(sys.argv[2]), float(sys.argv[3])
    while not go.exists():  # every claimant starts at once
        time.sleep(0.001)
    try:
        claim = claim_run_dir(folder, resume=False)
    except RunFolderError as exc:
        print("LOST", exc, flush=True)
        sys.exit(0)
    (pathlib.Path(folder) / "checkpoints").mkdir()
    (pathlib.Path(folder) / "checkpoints" / "last.ckpt").write_bytes(b"")
    print("WON", flush=True)
    time.sleep(hold)
    """
)


def _claimants(tmp_path, folder, n, hold=0.0):
    script = tmp_path / "claim.py"
    script.write_text(CLAIMANT)
    go = tmp_path / f"go-{n}"
    procs = [subprocess.Popen([sys.executable, str(script), str(folder), str(go), str(hold)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    time.sleep(1.0)  # let every interpreter start and wait for the signal
    go.touch()
    return procs


def test_of_several_processes_given_one_run_dir_exactly_one_claims_it(tmp_path):
    folder = tmp_path / "runs" / "same"
    procs = _claimants(tmp_path, folder, 4)
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-2000:]
        outputs.append(out.strip())
    won = [o for o in outputs if o.startswith("WON")]
    lost = [o for o in outputs if o.startswith("LOST")]
    assert len(won) == 1 and len(lost) == 3, outputs
    # the losers either saw the claim being made or the files after it: both name the folder
    assert all(f"run folder '{folder}'" in o for o in lost), lost


def test_a_second_fresh_claim_in_one_process_is_refused(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()  # an empty folder made beforehand may be claimed
    claim = claim_run_dir(folder, resume=False)
    assert (folder / CLAIM_FILE).exists() and f"pid {os.getpid()}" in (folder / CLAIM_FILE).read_text()
    with pytest.raises(RunFolderError, match=f"run folder '{folder}'"):
        claim_run_dir(folder, resume=False)
    claim.release()


def test_resume_waits_for_the_owner_to_be_gone(tmp_path):
    folder = tmp_path / "run"
    owner = _claimants(tmp_path, folder, 1, hold=120)[0]
    assert owner.stdout.readline().startswith("WON")
    with pytest.raises(RunFolderError, match=f"run folder '{folder}' is in use by another holomodal process \\(pid {owner.pid}"):
        claim_run_dir(folder, resume=True)
    owner.send_signal(signal.SIGKILL)  # the kernel drops its lock, as after any crash
    owner.wait()
    claim = claim_run_dir(folder, resume=True)
    assert claim.held and f"pid {os.getpid()}" in (folder / CLAIM_FILE).read_text()
    # the process that holds a folder may resume it again (a notebook, say)
    assert claim_run_dir(folder, resume=True) is claim
    claim.release()


def test_classifier_run_folder_is_claimed_and_a_second_run_refused(covid, tmp_path):
    from tiny import TINY_ENCODERS, small_schema
    from holomodal.estimator import Classifier

    schema = small_schema(covid.schema, drop=("text",))
    rows = covid.split("train")[schema.column_names].iloc[:32]
    make = lambda: Classifier(schema, model={"encoders": {m: TINY_ENCODERS[m] for m in ("image", "tabular")}},  # noqa: E731
                              trainer={"max_epochs": 1, "enable_progress_bar": False}, batch_size=16,
                              run_dir=tmp_path / "run", loggers=[])
    first = make().fit(rows)
    assert first.claim_.held and (tmp_path / "run" / CLAIM_FILE).exists()
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    with pytest.raises(RunFolderError, match="already exists and holds files"):
        make().fit(rows)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before


def test_the_claim_itself_is_create_or_fail(tmp_path, monkeypatch):
    """Two claimants that both passed the early emptiness check (the race the check cannot
    close): the O_EXCL claim file lets only the first through."""
    import holomodal.runs as runs

    monkeypatch.setattr(runs, "check_run_dir", lambda path, resume: None)
    folder = tmp_path / "run"
    first = runs.claim_run_dir(folder, resume=False)
    with pytest.raises(RunFolderError, match=f"run folder '{folder}' was just claimed by another run \\(pid {os.getpid()}"):
        runs.claim_run_dir(folder, resume=False)
    first.release()
