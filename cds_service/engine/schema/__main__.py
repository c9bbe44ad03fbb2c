"""``python -m cds_service.engine.schema [EDITOR_COPY_DIR]``: regenerate rule.schema.json, copy all schemas.

Writes the generated rule schema into the package, sets the test schema's ``hook`` enum from the hook
table, and, when a folder is given (``make schema`` passes ``rules/schema``), copies every schema there
for editors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cds_service.engine.schema import NAMES, render, schema_text
from cds_service.engine.schema.rule import rule_schema, test_schema


def main(argv: list[str]) -> int:
    package = Path(__file__).resolve().parent
    (package / "rule.schema.json").write_text(render(rule_schema()), encoding="utf-8")
    (package / "test.schema.json").write_text(render(test_schema(json.loads(schema_text("test")))), encoding="utf-8")
    for folder in argv:
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        for name in NAMES:
            (target / f"{name}.schema.json").write_text(schema_text(name), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
