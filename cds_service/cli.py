"""The ``kbladder`` command: rule tools for informaticists (and, with the service, ``serve``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from cds_service.cdshooks.hooks import HOOKS
from cds_service.clinical.timeutil import TimeError, parse_instant
from cds_service.decision.decide import decide
from cds_service.decision.testing import TEST_PATIENT_ID, format_report, run_tests
from cds_service.engine.explain import explain
from cds_service.engine.loader import load_ruleset
from cds_service.engine.shorthand import Expander, ShorthandError
from cds_service.engine.yamlpos import YamlError, load_file
from cds_service.fhir.parse import bundle_resources

DEFAULT_RULES = Path("rules")
HOOK_CHOICE = click.Choice(list(HOOKS))


@click.group()
@click.version_option(package_name="kbladder-cds")
def main() -> None:
    """kbladder-cds: CDS Hooks service for ketamine-induced bladder injury."""


@main.group()
def rules() -> None:
    """Check, test and explain rule files."""


@rules.command("check")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--site", type=click.Path(path_type=Path), help="Site configuration with parameter overrides.")
def check(paths: tuple[Path, ...], site: Path | None) -> None:
    """Check rule files: schema, value sets, codes, units, FHIRPath, templates, unreachable tiers.

    Every problem is printed as file:line:col: message; the exit status is 1 on any error.
    """
    from cds_service.governance.lock import governance_problems

    folders = list(paths) or [DEFAULT_RULES]
    result = load_ruleset(folders, site=site)
    problems = list(result.problems)
    if result.ruleset is not None:  # lock file (content changed without a version bump), project codes
        problems += governance_problems(result.ruleset, folders)
    for problem in sorted(problems, key=lambda p: (p.file, p.line, p.col)):
        click.echo(str(problem))
    errors = [p for p in problems if p.severity == "error"]
    if errors or result.ruleset is None:
        click.echo(f"{len(errors)} error(s)", err=True)
        sys.exit(1)
    ruleset = result.ruleset
    click.echo(f"ok: {len(ruleset.rules)} rule(s), {len(ruleset.valuesets)} value set(s), rule set {ruleset.version}")


@rules.command("lock")
@click.argument("folder", required=False, type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_RULES)
def lock_cmd(folder: Path) -> None:
    """Record each rule's id, version and content digest in FOLDER/rules.lock.json (after a version bump)."""
    from cds_service.governance.lock import write_lock

    result = load_ruleset([folder])
    if result.ruleset is None:
        for problem in result.errors:
            click.echo(str(problem), err=True)
        sys.exit(1)
    path = write_lock(result.ruleset, folder)
    click.echo(f"locked {len(result.ruleset.rules)} rule(s) in {path}")


@rules.command("test")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
def test(paths: tuple[Path, ...]) -> None:
    """Run rule test files (default rules/tests): expected cards at a fixed now."""
    report = run_tests(list(paths) or [DEFAULT_RULES / "tests"])
    click.echo(format_report(report))
    if not report.cases and not report.problems:
        click.echo("no rule tests found", err=True)
        sys.exit(1)
    sys.exit(0 if report.ok else 1)


def _load_json_or_shorthand(path: Path, now: Any, *, draft: bool) -> tuple[list[Any], Any]:
    """Resources from a FHIR JSON file (Bundle or resource) or a shorthand YAML file."""
    if path.suffix == ".json":
        return bundle_resources(json.loads(path.read_text(encoding="utf-8"))), None
    doc = load_file(path).data or {}
    when = now or (parse_instant(str(doc["now"])) if doc.get("now") else None)
    if when is None:
        raise click.UsageError(f"{path}: shorthand patients need --now or a 'now:' key")
    expander = Expander(when, TEST_PATIENT_ID)
    items = doc.get("drafts" if draft else "data") or []
    resources = [] if draft else [expander.patient(doc.get("patient"))]
    resources += [expander.expand(item, draft=draft) for item in items]
    return resources, when


@rules.command("explain")
@click.option("--patient", "patient_file", required=True, type=click.Path(exists=True, path_type=Path),
              help="FHIR Bundle (.json) or shorthand patient (.yaml).")
@click.option("--hook", required=True, type=HOOK_CHOICE)
@click.option("--now", help="Evaluation time (ISO 8601); default: the file's now, else the current time.")
@click.option("--draft", "draft_file", type=click.Path(exists=True, path_type=Path),
              help="Draft orders (order hooks) or the booking (appointment-book: proposed Appointments and the "
                   "orders they book): FHIR JSON (Bundle or resource) or shorthand YAML with drafts:.")
@click.option("--select", "selections", multiple=True, metavar="Type/id",
              help="order-select: the selected draft (repeatable), as context.selections; default: every draft.")
@click.option("--rules", "rules_dir", type=click.Path(path_type=Path), default=DEFAULT_RULES, show_default=True)
@click.option("--site", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable trace and cards.")
def explain_cmd(patient_file: Path, hook: str, now: str | None, draft_file: Path | None,
                selections: tuple[str, ...], rules_dir: Path, site: Path | None, as_json: bool) -> None:
    """For every rule: fired or not, and why (each condition's value and evidence).

    Decided by the same function as the service, so the drafts a hook evaluates and the cards match it.
    """
    loaded = load_ruleset([rules_dir], site=site)
    if loaded.ruleset is None:
        for problem in loaded.problems:
            click.echo(str(problem), err=True)
        sys.exit(1)
    try:
        fixed = parse_instant(now) if now else None
        resources, file_now = _load_json_or_shorthand(patient_file, fixed, draft=False)
        drafts: list[Any] = []
        if draft_file is not None:
            drafts, _ = _load_json_or_shorthand(draft_file, fixed or file_now, draft=True)
    except (TimeError, ShorthandError, YamlError, json.JSONDecodeError, OSError) as exc:
        raise click.UsageError(str(exc)) from exc
    when = fixed or file_now
    if when is None:
        from datetime import UTC, datetime

        when = datetime.now(UTC)  # the CLI edge may read the clock; the engine never does
    if selections and HOOKS[hook].drafts != "selected":
        raise click.UsageError(f"--select is for a hook with selections; {hook} has none")
    decision = decide(loaded.ruleset, resources, hook=hook, now=when, drafts=drafts,
                      selections=list(selections) or None, trace=True)
    cards = decision.cards
    if as_json:
        click.echo(json.dumps({"results": [r.as_json() for r in decision.evaluation.results], "cards": cards,
                               **({"extension": decision.body["extension"]} if "extension" in decision.body else {})},
                              indent=2))
        return
    for problem in decision.skipped:
        click.echo(f"warning: {problem}", err=True)
    click.echo(explain(decision.evaluation, color=sys.stdout.isatty()))
    click.echo("")
    click.echo(f"cards: {len(cards)}")
    for card in cards:
        click.echo(f"  [{card['indicator']}] {card['summary']}")


@main.command("serve")
@click.option("--host", envvar="KBLADDER_HOST", help="Address to bind (default 127.0.0.1).")
@click.option("--port", envvar="KBLADDER_PORT", type=int, help="Port (default 8080).")
@click.option("--rules", "rules_dir", envvar="KBLADDER_RULES_DIR", help="Rule folder (default rules).")
@click.option("--site", "site_file", envvar="KBLADDER_SITE_FILE", help="Site configuration file.")
@click.option("--database-url", envvar="KBLADDER_DATABASE_URL",
              help="SQLAlchemy URL (default sqlite:///var/kbladder.sqlite3).")
@click.option("--workers", envvar="KBLADDER_WORKERS", type=int, help="1: threaded server; more: gunicorn.")
@click.option("--config", "config_file", envvar="KBLADDER_CONFIG", type=click.Path(path_type=Path),
              help="YAML config file (public_url, auth issuers, ...; see docs/configuration.md).")
@click.option("--insecure-no-auth-on-public-interface", "insecure_no_auth_on_public_interface", is_flag=True,
              default=None, help="Allow serving with auth off on a non-loopback address (never in production).")
@click.option("--shadow-rules", "shadow_rules_dir", envvar="KBLADDER_SHADOW_RULES_DIR",
              help="Candidate rule folder evaluated beside the live set on every call: logged, never shown.")
def serve_cmd(config_file: Path | None, **options: Any) -> None:
    """Serve the CDS Hooks endpoints (other settings: config file and KBLADDER_* environment variables)."""
    from cds_service.config import ConfigError, Settings
    from cds_service.serve import serve

    try:
        settings = Settings.load(config=config_file, **options)
    except ConfigError as exc:
        click.echo(f"kbladder serve: {exc}", err=True)
        sys.exit(2)
    serve(settings)


@main.command("report")
@click.option("--since", help="Start of the period (ISO 8601 date or instant, inclusive).")
@click.option("--until", help="End of the period (ISO 8601 date or instant, exclusive).")
@click.option("--rule", "rule_id", help="Only this rule id.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "html"]), default="text", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file (default stdout).")
@click.option("--database-url", envvar="KBLADDER_DATABASE_URL", help="The store, as for `kbladder serve`.")
@click.option("--config", "config_file", envvar="KBLADDER_CONFIG", type=click.Path(path_type=Path),
              help="YAML config file, as for `kbladder serve`.")
def report_cmd(since: str | None, until: str | None, rule_id: str | None, fmt: str, out: Path | None,
               database_url: str | None, config_file: Path | None) -> None:
    """Per rule and version: calls, cards, undecided, suppressed, feedback and acceptance; shadow vs live."""
    from cds_service.governance.reportcmd import run_report

    run_report(since=since, until=until, rule_id=rule_id, fmt=fmt, out=out, database_url=database_url,
               config_file=config_file)


@main.command("synth")
@click.option("--seed", type=int, default=1, show_default=True, help="Same seed, same cohort, byte for byte.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder to write.")
@click.option("--now", help="Reference time of the cohort (ISO 8601; default 2026-06-01T09:00:00Z).")
@click.option("--backgrounds", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of Synthea bundles to overlay (e.g. tests/data/synthetic-fhir-r4).")
@click.option("--format", "fmt", type=click.Choice(["bundles", "ndjson"]), default="bundles", show_default=True,
              help="bundles: one transaction Bundle per patient; ndjson: a FHIR Bulk Data export.")
@click.option("--patients", type=click.IntRange(min=1), help="ndjson: this many patients (copies of the cohort).")
@click.option("--gzip", "compress", is_flag=True, help="ndjson: write *.ndjson.gz.")
@click.option("--files-per-type", type=click.IntRange(min=1), default=1, show_default=True,
              help="ndjson: split each resource type over this many files, as export servers do.")
def synth_cmd(seed: int, out: Path, now: str | None, backgrounds: Path | None, fmt: str, patients: int | None,
              compress: bool, files_per_type: int) -> None:
    """Write a synthetic ketamine cohort: FHIR R4 bundles + manifest, or a Bulk Data export (--format ndjson)."""
    from cds_service.synth import main_synth

    if fmt == "bundles" and (patients or compress or files_per_type != 1):
        raise click.UsageError("--patients, --gzip and --files-per-type need --format ndjson")
    if fmt == "ndjson":
        from cds_service.synth.bulk import write_export

        try:
            export = write_export(seed, out, now, patients=patients, backgrounds=backgrounds, compress=compress,
                                  files_per_type=files_per_type)
        except (ValueError, OSError) as exc:
            raise click.UsageError(str(exc)) from exc
        count = sum(item["count"] for item in export["output"] if item["type"] == "Patient")
        total = sum(item["count"] for item in export["output"])
        click.echo(f"{count} patients, {total} resources in {len(export['output'])} file(s), seed {seed}: "
                   f"{out}/manifest.json, expectations in {out}/expected.json")
        return
    try:
        manifest = main_synth(seed, out, now, backgrounds)
    except (ValueError, OSError) as exc:
        raise click.UsageError(str(exc)) from exc
    with_drafts = sum(1 for p in manifest["patients"] if p["files"]["drafts"])
    click.echo(f"{len(manifest['patients'])} patients ({with_drafts} with draft orders), seed {seed}, "
               f"now {manifest['now']}: {out}/manifest.json")


@main.command("simulate")
@click.argument("export", required=False, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder for summary.json, the CSV files and report.html.")
@click.option("--rules", "rules_dir", type=click.Path(path_type=Path), default=DEFAULT_RULES, show_default=True)
@click.option("--site", type=click.Path(path_type=Path), help="Site configuration with parameter overrides.")
@click.option("--compare", "compare_dir", type=click.Path(path_type=Path),
              help="A second rule folder replayed on the same calls; report.html lists whose cards change.")
@click.option("--compare-site", type=click.Path(path_type=Path), help="Site file for --compare (default: --site).")
@click.option("--as-of", "as_of", multiple=True, help="patient-view at this date/time (ISO 8601; repeatable).")
@click.option("--every", "every_days", type=click.IntRange(min=1),
              help="patient-view every N days from each patient's first ketamine exposure.")
@click.option("--workers", type=click.IntRange(min=1),
              help="Local Dask worker processes (1: this process, synchronous). Default: one per core.")
@click.option("--scheduler", help="Address of a running Dask scheduler (tcp://HOST:PORT) instead of local workers.")
@click.option("--patients-per-partition", type=click.IntRange(min=1), default=None,
              help="Patients evaluated per Dask task (bounds a task's memory; default 50).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr.")
@click.option("--fhir", "fhir_url", help="Read patients from this FHIR server instead of an export (with --patient).")
@click.option("--fhir-token", envvar="KBLADDER_FHIR_TOKEN", help="Bearer token for --fhir (prefer the variable "
              "KBLADDER_FHIR_TOKEN: a command line is visible to other users).")
@click.option("--patient", "patients", multiple=True, help="With --fhir: a patient id to replay (repeatable).")
def simulate_cmd(export: Path | None, out: Path, rules_dir: Path, site: Path | None, compare_dir: Path | None,
                 compare_site: Path | None, as_of: tuple[str, ...], every_days: int | None, workers: int | None,
                 scheduler: str | None, patients_per_partition: int | None, progress: bool, fhir_url: str | None,
                 fhir_token: str | None, patients: tuple[str, ...]) -> None:
    """Back-test rules over a FHIR Bulk Data export: replay every ketamine order, write a committee report.

    Exit status 0 when the run completed (bad lines are counted and listed, not fatal), 2 on unusable input.
    """
    from cds_service.simulate import command

    if workers is not None and scheduler is not None:
        click.echo("kbladder simulate: --workers and --scheduler exclude each other", err=True)
        sys.exit(command.EXIT_UNUSABLE)
    request = command.Request(
        export=export, out=out, rules=rules_dir, site=site, compare=compare_dir, compare_site=compare_site,
        as_of=as_of, every_days=every_days, workers=workers or command.default_workers(), scheduler=scheduler,
        patients_per_bucket=patients_per_partition or command.PATIENTS_PER_BUCKET, progress=progress,
        fhir=fhir_url, fhir_token=fhir_token, patients=patients)
    try:
        result, data = command.simulate(request)
    except command.UnusableInput as exc:
        click.echo(f"kbladder simulate: {exc}", err=True)
        sys.exit(command.EXIT_UNUSABLE)
    for problem in result.problems[:20]:
        click.echo(f"warning: {problem}", err=True)
    if len(result.problems) > 20:
        click.echo(f"warning: … {len(result.problems) - 20} more in {out}/problems.csv", err=True)
    replayed = data["replayed"]
    click.echo(f"{data['patients_in_export']} patients, {data['patients_exposed']} exposed; replayed "
               f"{replayed['orders']} orders ({replayed['order_sign_calls']} order-sign calls) and "
               f"{replayed['patient_view_calls']} patient-view calls; {data['bad_lines']} bad line(s)")
    for label, info in data["rulesets"].items():
        fired = ", ".join(f"{r['rule']} {r['patients_any']}" for r in info["rules"] if r["patients_any"]) or "none"
        click.echo(f"{label} {info['version']}: patients with a card per rule: {fired}")
    if "compare" in data:
        click.echo(f"compare: {data['compare']['patients_changed']} patient(s) with different cards")
    click.echo(f"report: {out}/report.html")


@main.command("demo")
@click.option("--seed", type=int, default=1, show_default=True, help="Cohort seed (when no --cohort is given).")
@click.option("--cohort", "cohort_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A folder written by `kbladder synth` instead of a fresh cohort.")
@click.option("--rules", "rules_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=DEFAULT_RULES, show_default=True)
@click.option("--backgrounds", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Overlay Synthea backgrounds on a fresh cohort.")
def demo_cmd(seed: int, cohort_dir: Path | None, rules_dir: Path, backgrounds: Path | None) -> None:
    """Replay a synthetic cohort through the real HTTP service and show which cards each patient got."""
    import tempfile

    from cds_service import demo
    from cds_service.synth import generate_cohort

    if cohort_dir is not None:
        now, patients = demo.from_directory(cohort_dir)
    else:
        now, patients = demo.from_cohort(generate_cohort(seed, backgrounds=backgrounds))
    label = f"replaying {len(patients)} patients over HTTP"
    with (
        tempfile.TemporaryDirectory(prefix="kbladder-demo-") as scratch,
        demo.serving(rules_dir, now, Path(scratch)) as url,
        click.progressbar(length=len(patients), label=label, file=sys.stderr) as bar,
    ):
        rows = demo.replay(patients, url, on_progress=bar.update)
    click.echo(demo.table(rows))
    click.echo("")
    click.echo(demo.summary(rows))


if __name__ == "__main__":
    main()
