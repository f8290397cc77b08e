"""benchmarks/throughput.py runs end to end at tiny shapes and writes every figure it prints."""

import json
import statistics
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "throughput.py"


def test_quick_run_pairs_every_variant_per_round_and_records_the_machine(tmp_path):
    out = tmp_path / "throughput.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--compile", "off", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(out.read_text())
    machine = record["machine"]
    assert machine["threads"] >= 1 and machine["torch"].startswith("2.") and machine["cpu"]
    assert set(record["results"]) == {"tip_pretrain", "late_fusion"}
    pairs = record["settings"]["pairs"]
    for name, row in record["results"].items():
        speeds = row["samples_per_s"]
        assert set(speeds) == {"ours", "reference", "image_model", "pipeline"}
        assert all(len(s["values"]) == pairs and min(s["values"]) > 0 for s in speeds.values()), (name, speeds)
        # each ratio is taken within a round, then summarised over the rounds
        within = [a / b for a, b in zip(speeds["ours"]["values"], speeds["reference"]["values"])]
        ratio = row["ratios"]["ours/reference"]
        assert ratio["values"] == within
        assert (ratio["min"], ratio["median"], ratio["max"]) == (min(within), statistics.median(within), max(within))
        assert row["ratios"]["best/reference"]["variant"] == "ours"
        assert name in done.stdout
    assert "written" in done.stdout
