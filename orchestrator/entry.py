"""``orch`` and ``spawn-worker`` as the images install them (``python3 -m orchestrator.entry
COMMAND ARGS...``).

In a manager with a control plane ($ORCHESTRATOR_CONTROL), the command line goes to the control
plane, which does the work (control/channel.py), and nothing else is imported: the commands'
own modules would only cost the manager's command their import time. Elsewhere (the control
plane itself, the original layout), the command runs here as ``bin/`` runs it.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing, collections.abc and pathlib are not imported for a type alone
if TYPE_CHECKING:
    from collections.abc import Sequence

CONTROL = "ORCHESTRATOR_CONTROL"  # environment.CONTROL, not imported: this module stays light
COMMANDS = ("orch", "spawn-worker")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        print(f"usage: python3 -m orchestrator.entry {{{','.join(COMMANDS)}}} ARGS...", file=sys.stderr)
        return 2
    command, rest = args[0], args[1:]
    control = os.environ.get(CONTROL)
    if control:
        from .control.channel_client import client_main

        return client_main(command, rest, control)
    if command == "orch":
        from .orch import main as orch_main

        return orch_main(rest)
    from .spawn import main as spawn_main

    return spawn_main(rest)


if __name__ == "__main__":
    sys.exit(main())
