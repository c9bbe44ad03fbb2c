"""YAML that remembers where each value came from.

Rule authors need ``file:line:col`` for every problem, including problems found long after
parsing (schema, value sets, units). We compose the YAML node tree with PyYAML's safe
loader and record the mark of every value by its path, so any later check can say where.
Timestamps stay strings (rule files hold ISO text, and JSON Schema validates strings);
duplicate keys are errors, not silently last-one-wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Path_ = tuple[str | int, ...]


class _Loader(yaml.SafeLoader):
    """Safe loader without the implicit timestamp type."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem in one file, printed as ``file:line:col: message``."""

    file: str
    line: int
    col: int
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        prefix = "" if self.severity == "error" else f"{self.severity}: "
        return f"{self.file}:{self.line}:{self.col}: {prefix}{self.message}"


@dataclass(slots=True)
class Located:
    """A YAML document with the position of every value and key."""

    file: str
    data: Any
    values: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    styles: dict[Path_, str] = field(default_factory=dict)  # scalar style: "" plain, '"', "'", "|", ">"
    lines: list[str] = field(default_factory=list, repr=False)

    def text_at(self, path: Path_, line: int = 1, column: int = 0) -> tuple[int, int]:
        """File line and column of a character inside a scalar's text (``line`` 1-based, ``column`` 0-based).

        FHIRPath and template errors are positions inside a value: a quoted value starts one
        column after its quote, a block value (``|``, ``>``) on the line after its indicator,
        and folded or multi-line values join their source lines with single spaces.
        """
        first, col = self.where(path)
        style = self.styles.get(tuple(path))
        if style is None:
            return first, col + column
        if style in ("|", ">"):
            first += 1
            text = next((t for t in self.lines[first - 1 :] if t.strip()), "")  # indentation of the content
            col = len(text) - len(text.lstrip(" ")) + 1
        elif style:
            col += 1  # past the opening quote
        if style == "|" or line > 1:
            return first + line - 1, col + column
        row, remaining = first, column
        while row < len(self.lines):
            segment = self.lines[row - 1][col - 1 :].rstrip()
            nxt = self.lines[row]
            if remaining <= len(segment) or not nxt.strip():
                break
            remaining -= len(segment) + 1
            row, col = row + 1, len(nxt) - len(nxt.lstrip(" ")) + 1
        return row, col + remaining

    def where(self, path: Path_, *, key: bool = False) -> tuple[int, int]:
        """Line and column of a path (or its nearest located ancestor)."""
        table = self.keys if key and path in self.keys else self.values
        probe = tuple(path)
        while probe not in table and probe:
            probe = probe[:-1]
            table = self.values
        return table.get(probe, (1, 1))

    def problem(self, path: Path_, message: str, *, key: bool = False, severity: str = "error") -> Problem:
        line, col = self.where(path, key=key)
        return Problem(self.file, line, col, message, severity)


class YamlError(Exception):
    """A file that is not readable YAML; carries the problem with its position."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def load_text(text: str, file: str) -> Located:
    """Parse YAML text into data plus positions; raise YamlError with a position on bad syntax."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise YamlError(Problem(file, line, col, f"YAML syntax: {exc.problem or exc}")) from exc
    except yaml.YAMLError as exc:
        raise YamlError(Problem(file, 1, 1, f"YAML: {exc}")) from exc
    located = Located(file, None, lines=text.splitlines())
    if node is None:
        return located
    constructor = _Loader(text)
    located.data = _build(node, (), located, constructor)
    return located


def load_file(path: Path) -> Located:
    """Read and parse one YAML file; unreadable files become a YamlError at line 1."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise YamlError(Problem(str(path), 1, 1, f"cannot read file: {exc}")) from exc
    return load_text(text, str(path))


def _build(node: yaml.Node, path: Path_, located: Located, constructor: yaml.SafeLoader) -> Any:
    located.values[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        constructor.flatten_mapping(node)
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = constructor.construct_object(key_node, deep=True)
            key_text = str(key)
            child = (*path, key_text)
            if key_text in result:
                line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                raise YamlError(Problem(located.file, line, col, f"duplicate key {key_text!r}"))
            located.keys[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            result[key_text] = _build(value_node, child, located, constructor)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), located, constructor) for i, item in enumerate(node.value)]
    located.styles[path] = node.style or ""
    return constructor.construct_object(node, deep=True)
