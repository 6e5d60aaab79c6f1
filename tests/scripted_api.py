"""What bench/bench.py imports from here (`tests.scripted_api`); the tests' own code imports it
from tests/support/scripted_api.py, where it lives. Goes once bench/bench.py imports from there too."""

from tests.support.scripted_api import ScriptedAPI, bash, text

__all__ = ["ScriptedAPI", "bash", "text"]
