"""The repository stands alone: no test, benchmark or product module reaches outside the checkout.

`.ci/run` proves it end to end (make test in a fresh clone in an empty folder); this catches the usual ways
in (a sibling ``shared/`` folder, an absolute machine path, climbing above the repo root) before CI does.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUTSIDE = re.compile(r"""/work/|REPO\.parent|\.parents\[[2-9]\]|\.\./shared|["']shared["']\s*/""")
DATA = REPO / "tests" / "data"


def test_no_source_file_reads_outside_the_repository() -> None:
    offenders = []
    for folder in ("cds_service", "tests", "bench", "scripts"):
        for path in sorted((REPO / folder).rglob("*")):
            if path.suffix not in {".py", ".sh"} or path == Path(__file__).resolve():
                continue
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if OUTSIDE.search(line):
                    offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "paths outside the repository:\n" + "\n".join(offenders)


def test_the_bundled_synthetic_data_is_intact() -> None:
    """The five Synthea bundles the FHIR-server and overlay tests load are in the repo, byte for byte."""
    folder = DATA / "synthetic-fhir-r4"
    sums = [line.split() for line in (folder / "SHA256SUMS").read_text().splitlines() if line.strip()]
    assert len(sums) == 5
    for digest, name in sums:
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    assert (DATA / "fhir-tools-ig" / "Binary-CDSHooksResponse.json").is_file()
