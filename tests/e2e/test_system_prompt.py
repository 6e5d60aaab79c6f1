"""Every command the Smart Manager prompt shows runs, exactly as written, in the manager.

The tasks those commands submit are answered by the real Claude Code of the worker image against
the scripted API: their fixed prompts carry no marker of the tests', so the scenarios are
registered under a part of each prompt's text (the test's own API has no other scenario).
"""

from __future__ import annotations

import json
import re

from tests.support.commands import sh
from tests.support.end_to_end import Run, run_py
from tests.support.git_servers import GitServer
from tests.support.scripted_api import bash, text
from tests.support.system_prompt import shell_blocks

# Parts of the prompts the prompt's commands submit (the batch's first task, then its second).
LIST_DART = "List all Dart files in the lib/ directory"
COUNT_DART = "Count the Dart files in lib/ and write the total to notes/dart-count.txt."


def test_the_prompt_s_commands_work_as_written(run: Run, git_server: GitServer, token_file):
    blocks = shell_blocks()
    assert "orch batch new" in blocks[0] and LIST_DART in blocks[1] and COUNT_DART in blocks[2]
    # The agents look and answer; neither changes a file, so there is nothing to merge.
    run.api.script(LIST_DART, bash("find lib -name '*.dart'"), text("lib/main.dart"))
    # task-002 takes a while, so that the prompt's `orch cancel task-002` finds it queued or running,
    # never finished. Its retry is a new conversation: it starts the scenario over and succeeds.
    run.api.script(COUNT_DART, bash("sleep 5"), bash("find lib -name '*.dart' | wc -l"), text("1"))
    repo = git_server.repo(f"p-{run.id}")
    script = "set -eu\n" + "\n".join(blocks)
    proc = run_py(run, "--repo", repo, "--token", str(token_file), "--volume", run.volume, "--name", run.manager,
                  "--", "bash", "-c", script)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    batch = out.splitlines()[0]  # the id orch batch new printed; the tasks' ids carry it
    assert re.fullmatch(r"count-the-dart-files-[0-9a-f]{6}", batch), out
    first, second = f"{batch}-01", f"{batch}-02"
    assert f"{second}: cancelled" in out and f"{second}: attempt 2 queued" in out
    assert "2 tasks: 2 success" in out  # orch wait
    assert f"{first}: success (attempt 1)" in out  # orch result
    assert "[agent] finished: success" in out  # orch logs
    assert "nothing to merge: no task that succeeded has a pushed branch" in out  # they changed nothing
    assert "removed 2 finished worker containers" in out
    for task_id in (first, second):
        assert run.result(task_id)["status"] == "success"
        assert json.loads(run.read(f"status/{task_id}.json"))["state"] == "success"
    assert run.result(first)["output"] == "lib/main.dart"
    assert run.result(second)["attempt"] == 2 and run.result(second)["output"] == "1"
    assert "lib/main.dart" in run.api.tool_results(LIST_DART)
    assert json.loads(run.read(f"attempts/{second}/1.json"))["status"] == "cancelled"
    assert sh("docker", "ps", "-aq", "--filter", f"name=worker-{batch}-").stdout == ""
