"""What the benchmark scripts share: writing one run's table and raw results."""

from __future__ import annotations

import json
from pathlib import Path


def write_results(out: str | Path, results: dict, seconds: float, table: str, overrides: list[str]) -> None:
    """Print the markdown ``table`` with the run's overrides and time, and write it to
    ``out.md`` beside the raw ``results`` in ``out.json``."""
    table += f"\n\nOverrides: {overrides}. Total run time: {seconds:.0f} s on CPU.\n"
    print(table)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"results": results, "seconds": seconds}, indent=2))
    out.with_suffix(".md").write_text(table)


def split_by_significance(differences: list[tuple[str, dict]], digits: int = 3) -> tuple[list[str], list[str], int]:
    """Paired differences (label, ``{"value", "low", "high"}`` from
    ``holomodal.evaluation.seed_bootstrap``) sorted by what their interval says: (those above 0,
    those below 0, each as "label (value [low, high])"; how many include 0)."""
    above, below, ties = [], [], 0
    for label, d in differences:
        text = f"{label} ({d['value']:+.{digits}f} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}])"
        if d["low"] > 0:
            above.append(text)
        elif d["high"] < 0:
            below.append(text)
        else:
            ties += 1
    return above, below, ties
