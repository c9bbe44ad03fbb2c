"""``python -m bench --quick`` runs end to end and prints its table (no timing is asserted: see docs/performance.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_prints_the_table() -> None:
    result = subprocess.run([sys.executable, "-m", "bench", "--quick"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| measure") and "result" in lines[0]
    for measure in ("typical order-sign latency", "heavy order-sign latency", "JSON floor", "FHIR fallback",
                    "rules vs 15", "HTTP order-sign", "peak RSS"):
        assert any(measure in line for line in lines), measure
    assert any(line.endswith("targets met") for line in lines)
    assert all(("PASS" in line) != ("MISS" in line) for line in lines if "≤" in line or "≥" in line)
