"""Packaging: `python -m kick_monitor`, the MAJOR.MINOR.BUILD version, the optional extras."""

from __future__ import annotations

import email
import importlib.metadata
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.cli.test_cli_basics import assert_one_error
from tests.conftest import REPO_ROOT, clean_environment

VERSION = re.compile(r"kick-monitor (\d+)\.(\d+)\.(\d+)\n")
OPTIONAL = {"pgserver": "embedded", "supervisor": "supervisor"}


def commit_count() -> int:
    done = subprocess.run(["git", "rev-list", "--count", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=30, check=True)
    return int(done.stdout)


def version_from_module(**env: str) -> tuple[int, int, int]:
    done = subprocess.run([sys.executable, "-m", "kick_monitor", "--version"], env=clean_environment(**env),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    found = VERSION.fullmatch(done.stdout)
    assert found, done.stdout
    major, minor, build = (int(part) for part in found.groups())
    return major, minor, build


def test_python_dash_m_prints_major_minor_build() -> None:
    major, minor, build = version_from_module()
    assert (major, minor) == (1, 0)
    assert build > 0, "a checkout knows its number of commits"
    written = (REPO_ROOT / "kick_monitor" / "_build.py").read_text()
    assert f"BUILD = {build}\n" in written, "the number comes from the file setup.py wrote"


def test_a_wheel_carries_the_build_number(tmp_path: Path) -> None:
    """`pip wheel` (a few seconds) counts the commits and writes them into the package and its metadata;
    installed, the package says that number without git.

    Built from a clone, so this checkout's own kick_monitor/_build.py is left alone.
    """
    source = tmp_path / "source"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO_ROOT), str(source)], check=True,
                   capture_output=True, timeout=120)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("kick_monitor-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        metadata = email.message_from_bytes(archive.read(next(
            name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))))
    build = commit_count()
    assert metadata["Version"] == f"1.0.{build}"
    for requirement in metadata.get_all("Requires-Dist") or []:
        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower()
        if name in OPTIONAL:
            assert "extra ==" in requirement, f"a plain install must not pull {requirement}"

    site = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    shown = subprocess.run(
        [sys.executable, "-c", "import kick_monitor; print(kick_monitor.__version__, kick_monitor.__file__)"],
        env={**os.environ, "PYTHONPATH": str(site)}, cwd=tmp_path, capture_output=True, text=True, timeout=60,
        check=True,
    ).stdout.split()
    assert shown == [f"1.0.{build}", str(site / "kick_monitor" / "__init__.py")], "the wheel's own number, no git"


def test_a_plain_install_requires_neither_pgserver_nor_supervisor() -> None:
    required = importlib.metadata.requires("kick-monitor") or []
    by_name: dict[str, list[str]] = {}
    for requirement in required:
        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower()
        by_name.setdefault(name, []).append(requirement)
    for name, extra in OPTIONAL.items():
        assert by_name[name], f"{name} is still declared"
        assert all("extra ==" in requirement for requirement in by_name[name]), by_name[name]
        assert any(f'extra == "{extra}"' in requirement for requirement in by_name[name]), by_name[name]
        assert any('extra == "test"' in requirement for requirement in by_name[name]), "make venv installs it"


def test_run_without_a_database_or_the_embedded_extra(tmp_path: Path) -> None:
    """No KICK_MONITOR_DATABASE_URL and no pgserver: one line saying what to do, exit 2, nothing started."""
    hidden = tmp_path / "no-pgserver"
    hidden.mkdir()
    (hidden / "pgserver.py").write_text("raise ImportError('pgserver is not installed (test)')\n")
    env = clean_environment(KICK_MONITOR_DATA_DIR=str(tmp_path / "data"))
    env["PYTHONPATH"] = f"{hidden}:{env['PYTHONPATH']}"
    for command in (["run"], ["status"]):
        done = subprocess.run([sys.executable, "-m", "kick_monitor", *command], env=env, capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 2, (command, done.stderr)
        assert done.stdout == ""
        assert_one_error(done.stderr, "KICK_MONITOR_DATABASE_URL", "pip install 'kick-monitor[embedded]'")
    assert not (tmp_path / "data" / "postgres").exists()
