"""benchmarks/throughput.py runs end to end at tiny shapes and writes every figure it prints."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "throughput.py"


def test_quick_run_writes_all_four_measurements_and_their_ratios(tmp_path):
    out = tmp_path / "throughput.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(out.read_text())
    assert set(record["results"]) == {"tip_pretrain", "tip_finetune", "late_fusion"}
    for name, row in record["results"].items():
        speeds = {part: row[part]["samples_per_s"] for part in ("ours", "reference", "image_model", "pipeline")}
        assert all(v > 0 for v in speeds.values()), (name, speeds)
        assert row["ratios"]["a/b"] == speeds["ours"] / speeds["reference"]
        assert row["ratios"]["d/a"] == speeds["pipeline"] / speeds["ours"]
        assert row["ours"]["steps"] == record["settings"]["steps"]
    assert "tip_pretrain" in done.stdout and "written" in done.stdout
