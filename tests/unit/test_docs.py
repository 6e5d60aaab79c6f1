"""The README says what the code does: every setting, every option of run.py and spawn-worker."""

from __future__ import annotations

import re

import pytest

from orchestrator import environment, launch, spawn
from tests.support.paths import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("var", environment.ALL, ids=lambda var: var.name)
def test_every_environment_variable_is_documented(var: environment.Var):
    assert f"`{var.name}`" in README


@pytest.mark.parametrize("parser", [launch.build_parser({}), spawn.build_parser({})], ids=["run.py", "spawn-worker"])
def test_every_option_is_documented(parser):
    options = {s for action in parser._actions for s in action.option_strings if s.startswith("--")}
    missing = [o for o in sorted(options - {"--help"}) if not re.search(rf"`{re.escape(o)}\b", README)]
    assert missing == []
