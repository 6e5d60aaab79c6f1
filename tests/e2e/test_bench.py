"""The benchmark's short run (bench/bench.py --smoke): every comparison, tiny, on the real engine
with the tests' images. No figure is judged here; the point is that the benchmark works."""

from __future__ import annotations

import subprocess
import sys

from tests.support.end_to_end import PREFIX
from tests.support.paths import ROOT


def test_the_benchmark_runs_every_comparison_and_prints_its_table(test_images: None):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench.py"), "--smoke", "--prefix", f"{PREFIX}bench-",
         "--image-prefix", PREFIX, "--no-build"],
        capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout[proc.stdout.index("| comparison") :]
    for row in ("spawn-worker in the control plane vs docker run -d there",
                "a spawn from the control plane's running dispatcher vs docker run -d there",
                "spawn-worker through the control plane's channel, as the manager runs it, vs docker run -d there",
                "the same in the manager itself, in rounds of its own, its workers running meanwhile",
                "bin/spawn-worker.py on the host vs docker run -d",
                "one-second tasks, 2 at a time", "tasks with --max-workers 3: most running at once",
                "orch wait on 3 running tasks", "fresh volume: orch wait on 2 running tasks",
                "orch status over 50 finished tasks", "orch status --json over 50 finished tasks",
                "50 finished tasks: orch wait --all",
                "2 workers on 2 MB of history: bytes read from origin vs one git clone",
                "2 workers on 2 MB of history: every workspace ready vs one git clone",
                "3 real-CLI tasks against an API taking 1 at once (429 + retry-after beyond)",
                "relay overhead: time to first byte of 5 streams at once, through the relay vs direct"):  # fmt: skip
        assert row in table, table
    assert "failed" not in table
    # It leaves nothing behind.
    left = subprocess.run(["docker", "ps", "-aq", "--filter", f"name={PREFIX}bench-"], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip
    assert left == ""
    volumes = subprocess.run(["docker", "volume", "ls", "-q", "--filter", f"name={PREFIX}bench-"], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
    assert volumes == ""
