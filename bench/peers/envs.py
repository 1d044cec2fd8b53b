"""One virtual environment per peer under bench/.venvs/, created on first use from the pinned
requirements beside this file (and the lock file written after the first install, so that a
later fresh install gives the versions measured). Progress goes to stderr."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENVS = HERE.parent / ".venvs"
# The packages whose versions the report names, per environment.
REPORTED = {
    "litserve": ["litserve", "fastapi", "uvicorn", "scikit-learn"],
    "mlserver": ["mlserver", "mlserver-sklearn", "fastapi", "uvicorn", "uvloop", "scikit-learn"],
    "charts": ["matplotlib"],
}


def python_of(name: str) -> Path:
    """The environment's interpreter, installing the environment first if its requirements
    changed since (or it does not exist)."""
    requirements = HERE / f"requirements-{name}.txt"
    lock = HERE / f"lock-{name}.txt"
    root = VENVS / name
    python = root / "bin" / "python"
    wanted = hashlib.sha256(requirements.read_bytes()).hexdigest()
    stamp = root / ".installed"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"bench: installing {name} into {root} (once)", file=sys.stderr, flush=True)
    venv.EnvBuilder(clear=True, with_pip=True).create(root)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "pip==26.3"], check=True)
    constraints = ["-c", str(lock)] if lock.exists() else []
    subprocess.run([*pip, *constraints, "-r", str(requirements)], check=True)
    if not lock.exists():
        frozen = subprocess.run(
            [str(python), "-m", "pip", "freeze"], check=True, capture_output=True, text=True
        ).stdout
        lock.write_text(f"# pip freeze of bench/.venvs/{name}, from {requirements.name}\n{frozen}")
    stamp.write_text(wanted)
    return python


def versions(name: str) -> dict[str, str]:
    """The reported packages' versions in the environment."""
    script = (
        "import importlib.metadata as m, json, sys; "
        "print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))"
    )
    output = subprocess.run(
        [str(python_of(name)), "-c", script, *REPORTED[name]],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found: dict[str, str] = json.loads(output)
    return found
