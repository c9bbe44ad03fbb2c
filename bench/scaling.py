"""Rule-count scaling: the rule set as shipped vs ten times as many rules (generated copies with new ids).

Each copy moves every day-valued parameter default by its copy number (``P90D`` → ``P91D`` in copy 1): the
copies read the same data with different windows and lookbacks, as distinct rules on the same data would,
so the compiled plan cannot share their conditions with the originals' (identical copies would share all of
them and cost almost nothing: not a fair measure of 150 rules).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from .harness import RULES

_ID = re.compile(r"^id: (\S+)$", re.MULTILINE)
_NAME = re.compile(r"^name: (\S+)$", re.MULTILINE)
_DAYS = re.compile(r"(default: P)(\d+)(D\b)")


def multiplied_rules(target: Path, factor: int = 10) -> int:
    """Copy rules/ to ``target`` and add ``factor - 1`` distinct copies of every rule; returns the count."""
    shutil.copytree(RULES, target, ignore=shutil.ignore_patterns("tests"))
    originals = sorted(target.glob("*.yaml"))
    for path in originals:
        text = path.read_text(encoding="utf-8")
        for n in range(1, factor):
            copy = _ID.sub(lambda m, n=n: f"id: {m.group(1)}-C{n}", text, count=1)
            copy = _NAME.sub(lambda m, n=n: f"name: {m.group(1)}-c{n}", copy, count=1)
            copy = _DAYS.sub(lambda m, n=n: f"{m.group(1)}{int(m.group(2)) + n}{m.group(3)}", copy)
            (target / f"{path.stem}-c{n}.yaml").write_text(copy, encoding="utf-8")
    return len(list(target.glob("*.yaml")))
