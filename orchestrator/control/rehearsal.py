"""A rehearsal's two stand-ins, in the control plane (run.py --rehearsal; orchestrator/rehearsal.py
is run.py's side).

- **The model**: a scripted Messages API (orchestrator/scripted/) on the control plane's own
  loopback, following the person's script or the sample's. The relay forwards to it as it would
  to the API, with its tickets, budgets and rate-limit gate: a rehearsal's 429s and budgets are
  met by the same code as a real batch's. Nothing leaves the machine.
- **Origin**: a bare repository on the control plane's workspace volume (``REPO_URL`` names it):
  the sample app, made on the spot, or a copy of the person's ``--repo``, which is never pushed
  to (the copy keeps no remote). Tasks' branches and the integration branch land there.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from .. import environment, git
from ..errors import UserError
from ..rehearsal import SAMPLE_SCRIPT, SCRIPT_FROM_PERSON, SCRIPT_NAME
from ..scripted.script_file import read as read_script
from ..scripted.server import ScriptedAPI

# The sample app's files: a small Flutter app, enough for the sample script's tasks to change.
SAMPLE_FILES = {
    "README.md": "# Notes\n\nA small Flutter app to rehearse an orchestration on: a list of notes.\n",
    "pubspec.yaml": (
        "name: notes\ndescription: A small app to rehearse on.\nversion: 0.1.0\n\n"
        "environment:\n  sdk: '>=3.0.0 <4.0.0'\n\ndependencies:\n  flutter:\n    sdk: flutter\n"
    ),
    "lib/main.dart": (
        "import 'package:flutter/material.dart';\n\n"
        "void main() => runApp(const NotesApp());\n\n"
        "class NotesApp extends StatelessWidget {\n"
        "  const NotesApp({super.key});\n\n"
        "  @override\n"
        "  Widget build(BuildContext context) {\n"
        "    return MaterialApp(\n"
        "      title: 'Notes',\n"
        "      theme: ThemeData.light(),\n"
        "      home: const Scaffold(body: Center(child: Text('No notes yet'))),\n"
        "    );\n"
        "  }\n"
        "}\n"
    ),
}
SAMPLE_AUTHOR = {
    "GIT_AUTHOR_NAME": "Rehearsal",
    "GIT_AUTHOR_EMAIL": "rehearsal@localhost",
    "GIT_COMMITTER_NAME": "Rehearsal",
    "GIT_COMMITTER_EMAIL": "rehearsal@localhost",
}


def prepare_origin(origin: Path, branch: str, source: str | None, git_env: Mapping[str, str],
                   say: Callable[[str], None]) -> None:  # fmt: skip
    """The rehearsal's origin, made once: a restarted control plane, or the next run.py on the same
    volumes, carries on with the branches already there."""
    if (origin / "HEAD").exists():
        say(f"rehearsal: origin is {origin}, as an earlier run left it")
        return
    origin.parent.mkdir(parents=True, exist_ok=True)
    partial = origin.with_name(origin.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)  # an earlier start that stopped half-way
    if source:
        say(f"rehearsal: copying branch {branch} of {source} into {origin}; nothing is ever pushed to it")
        # The credential helper answers for REPO_URL alone: here the source is the URL git asks for.
        env = {**git_env, environment.REPO_URL.name: source}
        git.git("clone", "--quiet", "--bare", "--single-branch", "--branch", branch, "--", source, str(partial),
                env=env, timeout=git.CLONE_TIMEOUT)  # fmt: skip
        git.git("remote", "remove", "origin", cwd=partial)  # no way back to the person's repository
    else:
        say(f"rehearsal: origin is the sample app, made in {origin}")
        _make_sample(partial, branch)
    partial.rename(origin)


def _make_sample(bare: Path, branch: str) -> None:
    with tempfile.TemporaryDirectory(prefix="sample-") as scratch:
        work = Path(scratch)
        git.git("init", "--quiet", f"--initial-branch={branch}", str(work))
        for name, content in SAMPLE_FILES.items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_text(content, encoding="utf-8")
        git.git("add", "--all", cwd=work)
        git.git("commit", "--quiet", "-m", "The sample app", cwd=work, env=SAMPLE_AUTHOR)
        git.git("clone", "--quiet", "--bare", str(work), str(bare))
        git.git("remote", "remove", "origin", cwd=bare)


def serve_model(which: str, home: Path, say: Callable[[str], None]) -> ScriptedAPI:
    """The scripted model on this container's loopback: the person's script (run.py copied it into
    the home) or the sample's."""
    if which == SCRIPT_FROM_PERSON:
        path = home / SCRIPT_NAME
        if not path.is_file():
            raise UserError(f"the rehearsal's script is not in {path} (run.py copies it there)")
    else:
        path = SAMPLE_SCRIPT
    script = read_script(path)
    api = script.serve(host="127.0.0.1", port=0)
    scenarios = len(script.scenarios)
    say(f"rehearsal: the model follows {'the sample script' if path == SAMPLE_SCRIPT else 'your script'} "
        f"({scenarios} scenario{'s' if scenarios != 1 else ''}) at {api.url}; nothing reaches the API")  # fmt: skip
    return api
