"""Tasks that build on each other, end to end: a dependent task's agent starts from its
dependency's work, several dependencies are merged for it, a conflict between them blocks it,
and orch merge takes the stack without conflicts of its own making."""

from __future__ import annotations

import json

from tests.support.end_to_end import Manager, Run
from tests.support.scripted_api import bash, read, text, write

CLONE = "/workspace/repo"


def submit(manager: Manager, run: Run, name: str, *turns, depends_on: tuple[str, ...] = ()) -> str:
    options = ["--depends-on", *depends_on] if depends_on else []
    return manager.submit(run.prompt(name, *turns), "--id", run.task_id(name), *options)


def test_a_dependent_task_starts_from_its_dependencies_work(run: Run, manager: Manager):
    theme = submit(manager, run, "theme", write(f"{CLONE}/lib/theme.dart", "final dark = true;\n"), text("theme"))
    menu = submit(manager, run, "menu", write(f"{CLONE}/lib/menu.dart", "final items = [];\n"), text("menu"))
    # One dependency: its branch is where the agent starts.
    settings = submit(
        manager, run, "settings",
        bash("cat lib/theme.dart"),
        write(f"{CLONE}/lib/settings.dart", "useDark(dark);\n"),
        text("settings use the dark theme"),
        depends_on=(theme,),
    )  # fmt: skip
    # Two dependencies: the worker merges them first.
    home = submit(manager, run, "home", bash("ls lib"), write(f"{CLONE}/lib/home.dart", "home();\n"), text("home"),
                  depends_on=(theme, menu))  # fmt: skip
    manager.orch("start", "--all")
    assert manager.orch("wait", "--all").returncode == 0

    assert run.tool_results("settings")[0] == "final dark = true;"
    assert run.tool_results("home")[0].split() == ["main.dart", "menu.dart", "theme.dart"]
    first, second = manager.result(theme), manager.result(settings)
    assert second["started_from"] == [{"task_id": theme, "branch": f"orchestrator/{theme}",
                                       "commit": first["head_commit"]}]  # fmt: skip
    assert second["base_commit"] == first["head_commit"]
    assert [c["path"] for c in second["files_changed"]] == ["lib/settings.dart"]  # only its own work
    merged = manager.result(home)
    assert [p["task_id"] for p in merged["started_from"]] == [theme, menu]
    assert "starting from the work of" in manager.orch("logs", home).stdout

    # The stack merges without conflicts of its own making.
    report = json.loads(manager.orch("merge", "--all", "--json").stdout)
    assert report["ok"] and {t["state"] for t in report["tasks"]} <= {"merged", "already merged"}
    assert len(report["tasks"]) == 4


def test_dependencies_that_conflict_block_the_task_naming_the_files(run: Run, manager: Manager):
    # The Write tool replaces a file only once the agent has read it.
    left = submit(manager, run, "left", read(f"{CLONE}/README.md"), write(f"{CLONE}/README.md", "# Left\n"))
    right = submit(manager, run, "right", read(f"{CLONE}/README.md"), write(f"{CLONE}/README.md", "# Right\n"))
    both = submit(manager, run, "both", text("never"), depends_on=(left, right))
    manager.orch("start", "--all")
    assert manager.orch("wait", "--all", check=False).returncode == 1
    blocked = manager.result(both)
    assert blocked["status"] == "blocked" and "README.md" in blocked["error"]
    assert f"{right} and {left} both change README.md" in blocked["error"]
    assert run.api.requests_for(run.marker("both")) == []  # its agent never ran
    assert manager.status()[both]["state"] == "blocked"
