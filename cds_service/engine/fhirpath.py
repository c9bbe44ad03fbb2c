"""FHIRPath for what the building blocks cannot say, compiled once when rules load.

``fhirpathpy.compile`` accepts broken expressions silently (its ANTLR error listener is a
no-op), so syntax is checked with fhirpathpy's own generated lexer and parser and an error
listener that collects. Clock functions are refused: evaluation is pure, ``%now`` is given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import fhirpathpy
from antlr4 import CommonTokenStream, InputStream, Token
from antlr4.error.ErrorListener import ErrorListener
from fhirpathpy.models import models
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

CLOCK_FUNCTIONS = frozenset({"now", "today", "timeOfDay"})
_MODEL = models["r4"]


class _Collect(ErrorListener):
    def __init__(self) -> None:
        self.errors: list[tuple[int, int, str]] = []

    def syntaxError(self, recognizer: Any, offendingSymbol: Any, line: int, column: int, msg: str, e: Any) -> None:
        self.errors.append((line, column, msg))


def syntax_errors(expression: str) -> list[tuple[int, int, str]]:
    """(line, column, message) for every syntax error, plus use of clock functions (line 1-based, column 0-based)."""
    listener = _Collect()
    lexer = FHIRPathLexer(InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    stream = CommonTokenStream(lexer)
    parser = FHIRPathParser(stream)
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    try:
        parser.expression()
    except Exception as exc:  # the lexer can raise on characters it has no token for
        listener.errors.append((1, 0, str(exc)))
    if not listener.errors and parser.getCurrentToken().type != Token.EOF:
        token = parser.getCurrentToken()
        listener.errors.append((token.line, token.column, f"unexpected {token.text!r} after a complete expression"))
    stream.fill()
    tokens = stream.tokens
    for i, token in enumerate(tokens[:-1]):
        if token.text in CLOCK_FUNCTIONS and tokens[i + 1].text == "(":
            listener.errors.append(
                (token.line, token.column, f"{token.text}() reads the clock; use %now (evaluation is given its time)")
            )
    return listener.errors


@dataclass(frozen=True, slots=True)
class FhirPath:
    """A compiled FHIRPath expression; true when it yields a single ``true``."""

    expression: str
    _fn: Callable[..., list[Any]]

    @classmethod
    def compile(cls, expression: str) -> FhirPath:
        return cls(expression, fhirpathpy.compile(expression, model=_MODEL))

    def evaluate(self, resource: Mapping[str, Any], variables: Mapping[str, Any]) -> list[Any]:
        return self._fn(resource, dict(variables))

    def test(self, resource: Mapping[str, Any], variables: Mapping[str, Any]) -> bool | None:
        """FHIRPath truthiness: [true] → True, [false] or [] → False; an error → None (unknown)."""
        try:
            result = self.evaluate(resource, variables)
        except Exception:
            return None
        if len(result) == 1 and isinstance(result[0], bool):
            return result[0]
        return bool(result)
