"""Lay the package out under DIR as it is installed (DIR/agora/core -> core, ...).

The mapping is read from pyproject.toml, so it never drifts from what setuptools installs.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(target: str) -> None:
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    for package, folder in mapping.items():
        link = Path(target, *package.split("."))
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(ROOT / folder, target_is_directory=True)


if __name__ == "__main__":
    main(sys.argv[1])
