"""pyproject.toml installs every package of the checkout, inside one `twinlora/` folder (no generic
top-level names in site-packages), and the command runs `cli.main` from there."""
from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_installed_under_twinlora():
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setup["package-dir"] == {"twinlora": "."} and "py-modules" not in setup
    on_disk = {"twinlora." + ".".join(p.parent.relative_to(ROOT).parts)
               for top in ("common", "backends", "jobs", "benchmarks") for p in (ROOT / top).rglob("__init__.py")}
    assert set(setup["packages"]) == on_disk | {"twinlora"}
    for pkg in setup["package-data"]:
        assert pkg in setup["packages"]


def test_the_command_runs_cli_main():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"twinlora": "twinlora.cli:main"}
    assert "def main(" in (ROOT / "cli.py").read_text()
