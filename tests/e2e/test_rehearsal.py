"""The README's quick start, end to end: `bin/run.py --rehearsal`, with no token and no remote.

run.py starts the control plane and the manager as for a real batch; the control plane serves the
sample script's model and the sample app as origin. The manager's real Claude Code starts on the
script's request, splits it into four tasks (one depending on another, one that fails and is
retried with `orch retry --failed`, one stopped by its budget), waits, merges and summarizes; every
worker's real Claude Code does its part. The work lands on the rehearsal's origin, merged.
"""

from __future__ import annotations

import json
import subprocess

from tests.e2e.test_manager_interactive import Terminal, screen_text
from tests.support.commands import sh
from tests.support.end_to_end import MANAGER_IMAGE, PREFIX, WORKER_IMAGE, Run
from tests.support.paths import ROOT

ORIGIN = "/w/rehearsal/origin.git"  # the control plane's workspace volume, mounted at /w


def on_origin(run: Run, *args: str) -> str:
    """git on the rehearsal's origin, through a throwaway container, once the control plane is gone."""
    return sh("docker", "run", "--rm", "--volume", f"{run.manager}-control-workspace:/w:ro", "--entrypoint", "git",
              MANAGER_IMAGE, "-c", "safe.directory=*", "-C", ORIGIN, *args).stdout  # fmt: skip


def results(run: Run) -> list[dict]:
    script = "import glob, json; print(json.dumps([json.load(open(f)) for f in glob.glob('/orchestration/results/*')]))"
    return json.loads(sh("docker", "run", "--rm", "--volume", f"{run.volume}:/orchestration:ro", "--entrypoint",
                         "python3", WORKER_IMAGE, "-c", script).stdout)  # fmt: skip


def test_the_quick_start_rehearses_a_batch_to_a_merged_branch(run: Run, test_images: None) -> None:
    # The README's command, with the tests' images and names; no --token, no --repo, no --api-url.
    terminal = Terminal(["python3", str(ROOT / "bin" / "run.py"), "--rehearsal", "--image-prefix", PREFIX,
                         "--volume", run.volume, "--name", run.manager])  # fmt: skip
    try:
        terminal.wait_for("All done.", timeout=900)
    finally:
        sh("docker", "rm", "--force", run.manager, check=False)
        terminal.close()
    shown = screen_text(terminal.seen)
    assert "mergedintoorchestrator/integration" in shown.replace(" ", "")

    found = {r["task_id"]: r for r in results(run)}
    assert sorted((r["status"], r.get("attempt")) for r in found.values()) == [
        ("budget_exceeded", 1), ("success", 1), ("success", 1), ("success", 2)
    ], found  # fmt: skip
    assert all(r["rehearsal"] is True for r in found.values())
    by_file = {path: r for r in found.values() for path in [c["path"] for c in r["files_changed"]]}
    assert by_file["lib/widgets.dart"]["attempt"] == 2  # failed once, retried by `orch retry --failed`
    assert by_file["docs/dark-mode.md"]["status"] == "budget_exceeded"
    # The dependency: the settings task started from the themes' branch and read them.
    settings = by_file["lib/settings.dart"]
    assert [p["task_id"] for p in settings["started_from"]] == [by_file["lib/theme.dart"]["task_id"]]

    # The merged work, on the rehearsal's origin: the three that succeeded, not the one over budget.
    merged = on_origin(run, "ls-tree", "-r", "--name-only", "orchestrator/integration").split()
    assert {"lib/theme.dart", "lib/settings.dart", "lib/widgets.dart", "lib/main.dart"} <= set(merged)
    assert "docs/dark-mode.md" not in merged
    assert "darkTheme" in on_origin(run, "show", "orchestrator/integration:lib/settings.dart")
    # What the budget stopped is kept on its own branch.
    docs = by_file["docs/dark-mode.md"]
    assert docs["pushed"] and "Dark mode" in on_origin(run, "show", f"{docs['branch']}:docs/dark-mode.md")
    # Origin is the control plane's own: it has no remote to push anything on to.
    assert on_origin(run, "remote").strip() == ""


def readme_script() -> dict:
    """The script the README shows, as the README shows it."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Rehearsals: a batch without a model") :]
    return json.loads(section[section.index("```json\n") + 8 : section.index("\n```", section.index("```json"))])


def test_the_readmes_script_runs_as_a_ci_job_would_run_it(run: Run, test_images: None, tmp_path) -> None:
    # `--script FILE -- bash -c '...'`: the manager runs the commands of the script's own manager
    # scenario; every worker's Claude Code follows the script, copied into the control plane.
    script = readme_script()
    path = tmp_path / "changelog.json"
    path.write_text(json.dumps(script))
    commands = "\n".join(turn["bash"] for turn in script["scenarios"][0]["turns"] if isinstance(turn, dict))
    proc = subprocess.run(
        ["python3", str(ROOT / "bin" / "run.py"), "--rehearsal", "--script", str(path), "--image-prefix", PREFIX,
         "--volume", run.volume, "--name", run.manager, "--dashboard-port", "off", "--", "bash", "-c", commands],
        capture_output=True, text=True, timeout=900, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "pushed orchestrator/integration to origin" in out, out
    found = {r["task_id"]: r for r in results(run)}
    by_file = {change["path"]: r for r in found.values() for change in r["files_changed"]}
    assert by_file["CHANGELOG.md"]["status"] == "success"
    assert (by_file["README.md"]["status"], by_file["README.md"]["attempt"]) == ("success", 2)
    assert by_file["LICENCE"]["status"] == "budget_exceeded"
    merged = on_origin(run, "ls-tree", "-r", "--name-only", "orchestrator/integration").split()
    assert "CHANGELOG.md" in merged and "LICENCE" not in merged
    assert "What changed: CHANGELOG.md." in on_origin(run, "show", "orchestrator/integration:README.md")
