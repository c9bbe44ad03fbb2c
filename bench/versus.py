"""``python -m bench.versus REV [--rounds N]``: hook latency of this checkout against another revision.

Each round runs one fresh process per revision, alternating (this, REV, this, REV, ...), so machine noise
(another job, a CPU frequency step) hits both alike; each process builds the app of its own tree with its
own rules and measures p50 of the typical and heavy patients on patient-view and order-sign through the
test client (``bench.harness``: the same harness in both trees). Prints, per measure, the median of the
rounds' p50s for each revision, the spread (min-max) and the ratio. ``--rules rev`` runs both trees
on REV's rules, so the figures compare the code alone (rule content changes cost what they cost).
REV is checked out with ``git worktree`` into a temporary folder and removed afterwards. Figures only;
nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MEASURES = [f"{label} {hook}" for label in ("typical", "heavy") for hook in ("patient-view", "order-sign")]

WORKER = r"""
import json, sys
from pathlib import Path
from bench.harness import app_for, latency, request_bytes
from bench.patients import heavy, typical
counts = {"typical": int(sys.argv[1]), "heavy": int(sys.argv[2])}
out = {}
with app_for(*(Path(a) for a in sys.argv[3:])) as app:
    for label, patient in (("typical", typical()), ("heavy", heavy())):
        for hook in ("patient-view", "order-sign"):
            timing, _ = latency(app, hook, request_bytes(app, hook, patient), counts[label], 3)
            out[f"{label} {hook}"] = timing.p50
print("RESULT " + json.dumps(out))
"""


def measure(tree: Path, typical_n: int, heavy_n: int, rules: Path | None) -> dict[str, float]:
    """One fresh process in *tree* (its own code first on sys.path; its own rules unless *rules* is given):
    p50 per measure, in ms."""
    extra = [str(rules)] if rules is not None else []
    done = subprocess.run([sys.executable, "-c", WORKER, str(typical_n), str(heavy_n), *extra], cwd=tree,
                          env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}, capture_output=True,
                          text=True, timeout=1800, check=True)
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.versus", description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", help="the revision to compare with (a commit, tag or branch)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--typical", type=int, default=200, help="calls per round, typical patient")
    parser.add_argument("--heavy", type=int, default=30, help="calls per round, heavy patient")
    parser.add_argument("--rules", type=Path, help="one rule folder for both trees (compare code, not rules); "
                        "'rev' takes the other revision's rules/")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kbladder-versus-") as tmp:
        other = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(other), args.rev], cwd=ROOT, check=True,
                       capture_output=True)
        rules = (other / "rules") if str(args.rules) == "rev" else args.rules.resolve() if args.rules else None
        try:
            runs: dict[str, list[dict[str, float]]] = {"this": [], args.rev: []}
            for n in range(args.rounds):
                for name, tree in (("this", ROOT), (args.rev, other)) if n % 2 == 0 else \
                        ((args.rev, other), ("this", ROOT)):
                    runs[name].append(measure(tree, args.typical, args.heavy, rules))
                print(f"round {n + 1}/{args.rounds} done", file=sys.stderr)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=ROOT, capture_output=True)
    head = f"{'measure':26} {'this p50 ms':>12} {'spread':>15} {args.rev[:10] + ' p50 ms':>18} {'spread':>15} " \
           f"{'this/rev':>9}"
    print(head)
    for key in MEASURES:
        mine = [r[key] for r in runs["this"]]
        theirs = [r[key] for r in runs[args.rev]]
        a, b = statistics.median(mine), statistics.median(theirs)
        print(f"{key:26} {a:12.2f} {min(mine):7.2f}-{max(mine):<7.2f} {b:18.2f} {min(theirs):7.2f}-{max(theirs):<7.2f} "
              f"{a / b:9.2f}")
    print(f"(median of {args.rounds} alternating rounds; {args.typical} typical / {args.heavy} heavy calls per round; "
          f"rules: {'each tree its own' if rules is None else 'the same for both (' + str(args.rules) + ')'})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
