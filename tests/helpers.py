"""What bench/bench.py imports from here (`tests.helpers`); the tests' own code imports it from
tests/support, where it lives. Goes once bench/bench.py imports from there too."""

from tests.support.git_servers import seed_repo, start_git_daemon
from tests.support.ports import free_port

__all__ = ["free_port", "seed_repo", "start_git_daemon"]
