"""Combining conditions: names (``Ref``), ``all``/``any``/``not`` in Kleene logic, and compiling any condition.

``compile_condition`` is the loader's single entry point; blocks are looked up in the registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cds_service.engine.blocks.base import Node, Scope
from cds_service.engine.blocks.registry import BLOCKS
from cds_service.engine.trace import Outcome, Truth, all_of, any_of, not_of

if TYPE_CHECKING:
    from cds_service.engine.context import RuleContext

@dataclass(frozen=True, slots=True)
class Ref:
    """A named condition of the same rule (evaluated once, shared by tiers)."""

    name: str

    def evaluate(self, ctx: RuleContext) -> Outcome:
        return ctx.condition(self.name)

    def describe(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Combine:
    """``all`` / ``any`` / ``not`` in Kleene logic; evidence of the parts that made the answer."""

    op: str  # all | any | not
    items: tuple[Node, ...]

    def evaluate(self, ctx: RuleContext) -> Outcome:
        return combine(self.op, [item.evaluate(ctx) for item in self.items])

    def describe(self) -> str:
        if self.op == "not":
            return f"not {self.items[0].describe()}"
        return (
            "(" + f" {self.op.replace('all', 'and').replace('any', 'or')} ".join(i.describe() for i in self.items) + ")"
        )


def combine(op: str, parts: list[Outcome]) -> Outcome:
    """The outcome of ``all``/``any``/``not`` over its parts' outcomes, with the evidence of the parts that
    made a true answer and the missing data of the undecided ones (shared with compiled plans)."""
    truths = [p.truth for p in parts]
    truth = {"all": all_of, "any": any_of}[op](truths) if op != "not" else not_of(truths[0])
    chosen = [p for p in parts if p.truth is Truth.TRUE] if op != "not" else []
    missing = [m for p in parts if p.truth is Truth.UNKNOWN for m in p.missing]
    evidence = [e for p in chosen for e in p.evidence] if truth is Truth.TRUE else []
    return Outcome(truth, None, "", evidence, missing)


def compile_condition(raw: Any, path: tuple[str | int, ...], scope: Scope) -> Node | None:
    """Compile one condition expression: a name, a combinator or a block."""
    if isinstance(raw, str):
        if not scope.is_condition(raw):
            scope.problem(path, f"unknown condition {raw!r}")
            return None
        return Ref(raw)
    if not isinstance(raw, Mapping) or len(raw) != 1:
        scope.problem(
            path, "a condition is a name, or a mapping with exactly one of: all, any, not, " + ", ".join(BLOCKS)
        )
        return None
    ((kind, body),) = raw.items()
    here = (*path, kind)
    if kind in ("all", "any"):
        items = [compile_condition(item, (*here, i), scope) for i, item in enumerate(body or [])]
        return Combine(kind, tuple(i for i in items if i is not None)) if all(items) else None
    if kind == "not":
        item = compile_condition(body, here, scope)
        return Combine("not", (item,)) if item else None
    block = BLOCKS.get(kind)
    if block is None:
        scope.problem(path, f"unknown condition block {kind!r}")
        return None
    return block.compile(body if isinstance(body, Mapping) else {}, here, scope)


def implies(a: Node, b: Node) -> bool:
    """Sound (not complete) structural check that ``a`` being true makes ``b`` true.

    Used by ``rules check`` to find tiers that can never be reached: a later tier whose
    condition implies an earlier tier's condition never gets its turn.
    """
    if a == b:
        return True
    if isinstance(b, Combine) and b.op == "all":
        return all(implies(a, item) for item in b.items)
    if isinstance(b, Combine) and b.op == "any" and any(implies(a, item) for item in b.items):
        return True
    if isinstance(a, Combine) and a.op == "all":
        return any(implies(item, b) for item in a.items)
    if isinstance(a, Combine) and a.op == "any":
        return all(implies(item, b) for item in a.items)
    return False
