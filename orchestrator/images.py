"""Building the manager and worker images from the folders of this repository."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from .config import LABEL_EGRESS_ALLOW
from .docker import docker, flag, labels
from .errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
MANAGER_CONTEXT = REPO_ROOT / "orchestrator"
BUILD_TIMEOUT = 3600.0
CA_FOLDER = "ca-certificates"
EGRESS_ALLOW_FILE = "egress-allow.txt"  # in a worker type's folder: its default egress policy


def read_ca_cert(path: str | Path) -> Path:
    resolved = Path(path).expanduser()
    try:
        content = resolved.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read CA certificate {resolved}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"CA certificate {resolved} is not PEM text") from None
    if "-----BEGIN CERTIFICATE-----" not in content:
        raise UserError(f"CA certificate {resolved} holds no PEM certificate (BEGIN CERTIFICATE)")
    return resolved


def build_image(
    tag: str,
    context: Path,
    *,
    build_args: Mapping[str, str] | None = None,
    ca_certs: Sequence[Path] = (),
    target: str | None = None,
    show_progress: bool = True,
    image_labels: Mapping[str, str] | None = None,
) -> None:
    """``docker build`` of ``context``; extra CA certificates join a copy of it, never the tree."""
    with tempfile.TemporaryDirectory(prefix="orchestrator-build-") as tmp:
        if ca_certs:
            copy = Path(tmp) / "context"
            shutil.copytree(context, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            for index, cert in enumerate(ca_certs):
                # update-ca-certificates only picks up files ending in .crt.
                shutil.copyfile(cert, copy / CA_FOLDER / f"extra-{index}-{cert.stem}.crt")
            context = copy
        args = [arg for name, value in (build_args or {}).items() for arg in ("--build-arg", f"{name}={value}")]
        docker(
            "build", "--tag", tag, *args, *flag("--target", target), *labels(image_labels or {}), str(context),
            timeout=BUILD_TIMEOUT, capture=not show_progress,
        )  # fmt: skip


def build_manager_image(
    tag: str, ca_certs: Sequence[Path] = (), build_args: Mapping[str, str] | None = None, show_progress: bool = True
) -> None:
    build_image(tag, MANAGER_CONTEXT, ca_certs=ca_certs, build_args=build_args, show_progress=show_progress)


def pinned_claude_code_version() -> str:
    """The Claude Code release orchestrator/Dockerfile pins."""
    for line in (MANAGER_CONTEXT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if line.startswith("ARG CLAUDE_CODE_VERSION="):
            return line.split("=", 1)[1].strip()
    raise UserError("orchestrator/Dockerfile pins no CLAUDE_CODE_VERSION")


def build_worker_image(
    tag: str,
    worker_type: str,
    manager_image: str,
    build_args: Mapping[str, str] | None = None,
    show_progress: bool = True,
) -> None:
    """A worker image takes the runtime, Claude Code and the CA certificates from the manager image."""
    context = REPO_ROOT / worker_type
    if not (context / "Dockerfile").is_file():
        raise UserError(f"no worker type {worker_type!r}: {context / 'Dockerfile'} does not exist")
    args = {"RUNTIME_IMAGE": manager_image, **(build_args or {})}
    # The worker type's default egress policy travels with its image, where the control plane
    # reads it (control/egress_service.py): a new worker type brings its own list.
    allow = context / EGRESS_ALLOW_FILE
    allowed = {LABEL_EGRESS_ALLOW: allow.read_text(encoding="utf-8")} if allow.is_file() else {}
    build_image(tag, context, build_args=args, show_progress=show_progress, image_labels=allowed)
