"""Where the checkout and the tests' own files are."""

from __future__ import annotations

from pathlib import Path

SUPPORT = Path(__file__).resolve().parent
TESTS = SUPPORT.parent
ROOT = TESTS.parent
SAVED = SUPPORT / "saved"  # real output of docker and of Claude Code, saved for the fakes to answer with
STANDIN = SUPPORT / "standin"  # the stand-in `claude` of the worker runtime's tests
FAKES = SUPPORT / "fakes"  # the fake `docker` CLI, put first on PATH by the fake_docker fixture
GITSERVER = SUPPORT / "gitserver"  # the SSH git server's image
