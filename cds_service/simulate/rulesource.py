"""A rule set that can travel to Dask workers: its files' bytes, loaded once per worker process.

Loaded rule sets hold compiled FHIRPath and cannot be pickled, and a remote cluster's workers may not see
the committee's rule folder. So the driver snapshots the folder (and the site file) as bytes, and each
worker writes the snapshot to a private temporary folder and loads it there — once per process, checked
against the driver's digest, so every worker decides with exactly the rules the driver checked.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from cds_service.engine.loader import load_ruleset
from cds_service.engine.model import RuleSet

_loaded: dict[str, RuleSet] = {}  # by rule-set digest
_by_content: dict[str, RuleSet] = {}  # by the bytes (and names) of the snapshot's files
_lock = threading.Lock()


class RulesError(Exception):
    """The rule files do not load (problems as file:line:col: message, one per line)."""


@dataclass(frozen=True, slots=True)
class RuleSource:
    label: str
    files: tuple[tuple[str, bytes], ...]
    site: tuple[str, bytes] | None
    digest: str

    @property
    def version(self) -> str:
        return self.digest[:12]


def snapshot(label: str, folder: Path, site: Path | None = None) -> tuple[RuleSource, RuleSet]:
    """Load and check the rules on the driver; the snapshot plus the loaded set. Raises RulesError."""
    if not folder.is_dir():
        raise RulesError(f"{folder}: not a rule folder")
    files = tuple((str(p.relative_to(folder)), p.read_bytes()) for p in sorted(folder.rglob("*"))
                  if p.is_file() and p.suffix in (".yaml", ".yml", ".json"))
    site_bytes = (site.name, site.read_bytes()) if site else None
    content = _content_key(files, site_bytes)
    with _lock:
        known = _by_content.get(content)
    if known is None:  # the same files loaded before in this process (tests, a second run): no reload
        loaded = load_ruleset([folder], site=site)
        if loaded.ruleset is None:
            raise RulesError("\n".join(str(p) for p in loaded.errors) or f"{folder}: rules do not load")
        known = loaded.ruleset
    source = RuleSource(label, files, site_bytes, known.digest)
    with _lock:
        _loaded[source.digest] = known
        _by_content[content] = known
    return source, known


def _content_key(files: tuple[tuple[str, bytes], ...], site: tuple[str, bytes] | None) -> str:
    hasher = hashlib.sha256()
    for name, data in (*files, *([site] if site else [])):
        hasher.update(name.encode("utf-8") + b"\0" + hashlib.sha256(data).digest())
    return hasher.hexdigest()


def ruleset_of(source: RuleSource) -> RuleSet:
    """The loaded rule set of a snapshot (loaded on first use in this process)."""
    with _lock:
        found = _loaded.get(source.digest)
    if found is not None:
        return found
    with tempfile.TemporaryDirectory(prefix="kbladder-rules-") as scratch:
        root = Path(scratch) / "rules"
        for name, data in source.files:
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        site = None
        if source.site is not None:
            site = Path(scratch) / source.site[0]
            site.write_bytes(source.site[1])
        loaded = load_ruleset([root], site=site)
    if loaded.ruleset is None or loaded.ruleset.digest != source.digest:
        raise RulesError(f"rule set {source.label!r} loaded differently on this worker")
    with _lock:
        _loaded[source.digest] = loaded.ruleset
    return loaded.ruleset
