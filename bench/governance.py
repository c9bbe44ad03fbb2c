"""``python -m bench.governance``: what the decision log and a shadow rule set add to a hook call.

Three configurations of the real app (test client, SQLite store, clock fixed), measured in alternating
rounds so machine noise hits all of them alike: the decision log off (the card issue log still goes to the
background writer), the decision log on, and the decision log plus a shadow rule set (a copy of the live
rules with one threshold changed, so its version differs). The shadow set runs after the answer, on the
writer's side, so its cost to the answer is the hand-over; its own evaluation time is printed as well.
Prints figures only; no target is asserted.
"""

from __future__ import annotations

import statistics
import sys
from contextlib import ExitStack
from pathlib import Path
from tempfile import TemporaryDirectory

from cds_service.governance.replay import candidate_rules
from cds_service.http.state import EXTENSION

from .harness import RULES, app_for, latency, request_bytes
from .patients import heavy, typical

ROUNDS = 5


def main(argv: list[str]) -> int:
    iterations = 40 if "--quick" in argv else 150
    with TemporaryDirectory(prefix="kbladder-gov-bench-") as tmp, ExitStack() as stack:
        shadow_dir = str(candidate_rules(RULES, Path(tmp) / "cand"))
        configs = {
            "log off": stack.enter_context(app_for(decision_log=False)),
            "log on": stack.enter_context(app_for()),
            "log + shadow": stack.enter_context(app_for(shadow_rules_dir=shadow_dir)),
        }
        print(f"{'patient':8} {'hook':11} {'config':13} {'p50 ms':>8} {'p95 ms':>8}  (median of {ROUNDS} rounds)")
        for name, patient in (("typical", typical()), ("heavy", heavy())):
            for hook in ("patient-view", "order-sign"):
                bodies = {c: request_bytes(app, hook, patient) for c, app in configs.items()}
                p50: dict[str, list[float]] = {c: [] for c in configs}
                p95: dict[str, list[float]] = {c: [] for c in configs}
                for _ in range(ROUNDS):
                    for config, app in configs.items():
                        timing, _ = latency(app, hook, bodies[config], iterations if name == "typical" else 15)
                        p50[config].append(timing.p50)
                        p95[config].append(timing.p95)
                base = statistics.median(p50["log off"])
                for config in configs:
                    mid = statistics.median(p50[config])
                    print(f"{name:8} {hook:11} {config:13} {mid:8.2f} {statistics.median(p95[config]):8.2f}"
                          f"  {'+' if mid >= base else ''}{mid - base:.2f} ms vs log off")
        for config, app in configs.items():
            governance = app.extensions[EXTENSION].governance
            governance.flush(120)
            counts = governance.counters()
            shadow = counts.get("shadow_evaluated", 0)
            extra = (f", shadow evaluations {shadow} at {counts['shadow_ms_total'] / shadow:.2f} ms each (off the"
                     " request path)") if shadow else ""
            print(f"{config}: log records written {counts.get('log_written', 0)}, dropped "
                  f"{counts.get('log_dropped', 0)}, failed {counts.get('log_failed', 0)}, batches "
                  f"{counts.get('log_batches', 0)}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
