"""A command of the tests' own (git, docker, ssh-keygen): its output, or a failure that shows it."""

from __future__ import annotations

import subprocess
import tarfile


def sh(
    *argv: str, check: bool = True, input: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Runs ``argv`` (no shell), captures its output; with ``check``, an exit code other than 0 fails
    the test with what it printed."""
    proc = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout, check=False)
    if check and proc.returncode:
        raise AssertionError(f"{argv} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def files_holding(container: str, *needles: str) -> list[str]:
    """The files of ``container`` (running or ended: ``docker export``) that hold any of ``needles``,
    read in pieces that overlap by a needle's length."""
    wanted = [needle.encode() for needle in needles if needle]
    overlap = max((len(n) for n in wanted), default=0)
    found = []
    with subprocess.Popen(["docker", "export", container], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                source = tar.extractfile(member) if member.isfile() else None
                if source is None:
                    continue
                tail = b""
                while chunk := source.read(1 << 20):
                    piece = tail + chunk
                    if any(needle in piece for needle in wanted):
                        found.append(member.name)
                        break
                    tail = piece[-overlap:] if overlap else b""
    assert proc.returncode == 0, f"docker export {container} failed"
    return found
