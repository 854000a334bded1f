"""Write generated files, or check that they are current: the one `main` of every generator.

Each generator (`gen_config_docs.py`, `gen_metrics_docs.py`, `gen_grafana_dashboard.py`)
renders text from the code; a test fails when a committed file differs, and `--check`
says which file and which command writes it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def generate(outputs: Mapping[Path, Callable[[], str]], description: str, script: str,
             argv: list[str] | None = None) -> int:
    """Write every output that differs (or, with --check, exit 1 naming them)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help="exit 1 if a file differs; write nothing")
    args = parser.parse_args(argv)
    stale = []
    for path, render in outputs.items():
        text = render()
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    for path in stale:
        verb = "out of date" if args.check else "written"
        shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        print(f"{shown}: {verb}", file=sys.stderr if args.check else sys.stdout)
    if args.check and stale:
        print(f"run: python scripts/{script}", file=sys.stderr)
        return 1
    return 0
