"""The package works when installed like a package: a wheel in a fresh venv, run from another folder.

Before, ``pip install .`` then ``kbladder rules check rules/`` crashed: the JSON Schemas were read from
``rules/schema`` beside the source tree. This test builds the wheel, installs it (not editable) into a
new virtual environment, copies the rules WITHOUT their ``schema`` folder into an empty directory, and runs
``kbladder rules check`` and ``kbladder rules test`` there. The fresh venv gets the already-installed
dependencies through a path entry (no download); the package itself comes only from the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(*args: str | Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KBLADDER_", "PYTHON", "VIRTUAL_ENV"))}
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_wheel_installed_in_a_fresh_venv_checks_and_tests_rules_from_another_folder(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", wheels, REPO, cwd=tmp_path)
    wheel = next(wheels.glob("kbladder_cds-*.whl"))

    venv = tmp_path / "fresh"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=tmp_path)
                .stdout.strip())
    # Dependencies from the test venv, appended AFTER the fresh site-packages: the wheel's package wins.
    (site / "deps-from-test-venv.pth").write_text(sysconfig.get_path("purelib") + "\n")
    run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index", wheel,
        cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(REPO / "rules", elsewhere / "rules", ignore=shutil.ignore_patterns("schema"))
    where = run(python, "-c", "import cds_service; print(cds_service.__file__)", cwd=elsewhere).stdout.strip()
    assert where.startswith(str(site)), f"cds_service imported from {where}, not from the installed wheel"

    kbladder = venv / "bin" / "kbladder"
    checked = run(kbladder, "rules", "check", "rules", cwd=elsewhere)
    assert "error" not in checked.stdout.lower()
    tested = run(kbladder, "rules", "test", "rules/tests", cwd=elsewhere)
    assert "0 failed" in tested.stdout, tested.stdout[-500:]


DEV_ONLY = ("pytest", "pytest-httpserver", "ruff", "psycopg", "hypothesis", "playwright")


def test_make_run_installs_the_runtime_dependencies_only(tmp_path: Path) -> None:
    """`make run` installs the package without extras; test tools and the PostgreSQL driver are dev-only."""
    plan = run("make", "-n", "run", f"VENV={tmp_path / 'venv'}", cwd=REPO).stdout
    installs = [line for line in plan.splitlines() if " install " in line and "-e" in line]
    assert installs and all("[dev]" not in line and "'.[" not in line for line in installs), plan
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = {dep.split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip().lower()
               for dep in project["dependencies"]}
    assert not runtime & set(DEV_ONLY), runtime & set(DEV_ONLY)
    assert {"pytest", "ruff", "psycopg"} <= {d.split("[")[0].split(">")[0].strip().lower()
                                              for d in project["optional-dependencies"]["dev"]}
