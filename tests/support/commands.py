"""A command of the tests' own (git, docker, ssh-keygen): its output, or a failure that shows it."""

from __future__ import annotations

import subprocess


def sh(
    *argv: str, check: bool = True, input: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Runs ``argv`` (no shell), captures its output; with ``check``, an exit code other than 0 fails
    the test with what it printed."""
    proc = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout, check=False)
    if check and proc.returncode:
        raise AssertionError(f"{argv} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
