"""The project's console scripts, found in the environment the tests run in.

Tests run them as a user would, but never through ``PATH``: a copy installed elsewhere on the
machine (another virtualenv, a global ``pip install``) would make a test pass that fails on a
fresh clone. The scripts that count are the ones ``pip install -e .`` put next to the Python
that runs pytest.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: What ``[project.scripts]`` in pyproject.toml installs.
CONSOLE_SCRIPTS = (
    "sidecar-state",
    "sidecar-state-operator",
    "sidecar-state-hydrator",
    "sidecar-state-credentials",
    "sidecar-state-authz",
)


def console_script(name: str) -> Path:
    """The path of console script ``name`` in this interpreter's environment, or fail clearly."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: install the project into this environment"
            " (scripts/setup.sh python, or pip install -e .)"
        )
    return path
