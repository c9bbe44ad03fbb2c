"""``python -m bench.plans [--rounds N]``: rule evaluation alone, interpreted vs compiled plans.

The engine without the service around it: a PatientRecord of the typical and the heavy patient (resources
validated once, outside the timing), evaluated for each hook by

* ``interpreted`` — ``evaluate_interpreted``: every named condition of every rule walked per call (the
  reference semantics, and how the engine worked before plans);
* ``compiled, traced`` — ``evaluate(trace=True)``: the plan with shared slots, every rule fully traced (what
  ``rules explain`` gets);
* ``compiled`` — ``evaluate(trace=False)``: shared slots, short-circuit, only fired rules traced (what a live
  hook call gets).

A fresh record per call (a record memoises its findings; the service builds one per call too), the rule
set's facts cache emptied before each call when ``--cold-facts`` (a patient seen for the first time).
Rounds alternate the three; each figure is the median of the rounds' medians, with the spread. Figures only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cds_service.clinical.record import PatientRecord
from cds_service.engine.evaluate import evaluate, evaluate_interpreted
from cds_service.engine.loader import load_ruleset
from cds_service.engine.plan import plan_of
from cds_service.fhir.parse import parse_resources

from .harness import RULES
from .patients import NOW, heavy, typical

HOOKS = ("patient-view", "order-sign")
MODES: dict[str, Callable[..., Any]] = {
    "interpreted": lambda rs, rec, hook: evaluate_interpreted(rs, rec, hook=hook, now=NOW),
    "compiled, traced": lambda rs, rec, hook: evaluate(rs, rec, hook=hook, now=NOW, trace=True),
    "compiled": lambda rs, rec, hook: evaluate(rs, rec, hook=hook, now=NOW, trace=False),
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plans", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--typical", type=int, default=100, help="calls per round and mode, typical patient")
    parser.add_argument("--heavy", type=int, default=8, help="calls per round and mode, heavy patient")
    parser.add_argument("--rules", type=Path, default=RULES)
    parser.add_argument("--cold-facts", action="store_true", help="empty the facts cache before every call")
    args = parser.parse_args(argv)
    loaded = load_ruleset([args.rules])
    if loaded.ruleset is None:
        raise SystemExit(f"no valid rule set in {args.rules}")
    ruleset = loaded.ruleset
    plan = plan_of(ruleset)
    print(f"{len(ruleset.rules)} rules: {plan.leaves} leaf blocks → {plan.slots} slots per call "
          f"({plan.leaves - plan.slots} computed once for several rules)")
    facts = ruleset.compiled.get("facts")
    cases = []
    for label, patient, count in (("typical", typical(), args.typical), ("heavy", heavy(), args.heavy)):
        valid, _ = parse_resources(patient.resources)
        drafts, _ = parse_resources(patient.drafts)
        for hook in HOOKS:
            cases.append((f"{label} {hook}", valid, drafts if hook != "patient-view" else [], hook, count))
    medians: dict[tuple[str, str], list[float]] = {}
    for number in range(1, args.rounds + 1):
        print(f"· round {number} of {args.rounds}", file=sys.stderr, flush=True)
        for name, valid, drafts, hook, count in cases:
            for mode, run in MODES.items():
                samples = []
                for _ in range(count):
                    if args.cold_facts and facts is not None:
                        facts.clear()
                    record = PatientRecord(valid, drafts=drafts, **ruleset.record_options())
                    started = time.perf_counter()
                    run(ruleset, record, hook)
                    samples.append((time.perf_counter() - started) * 1000)
                medians.setdefault((name, mode), []).append(statistics.median(samples))
    print(f"{'measure (ms, median of ' + str(args.rounds) + ' rounds, spread)':<44}"
          + "".join(f"{mode:>26}" for mode in MODES) + f"{'interpreted ÷ compiled':>24}")
    for name, *_ in cases:
        cells = []
        for mode in MODES:
            values = medians[(name, mode)]
            cells.append(f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})")
        ratio = statistics.median(medians[(name, "interpreted")]) / statistics.median(medians[(name, "compiled")])
        print(f"{name:<44}" + "".join(f"{cell:>26}" for cell in cells) + f"{ratio:>23.2f}×")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
