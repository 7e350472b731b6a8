"""benchmarks/steps.py on the bundled model: a worker process per checkout times decoding steps of 1 and 2 rows and
the table has a row for each."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[2]


def test_times_the_bundled_model_at_each_row_count(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "steps.py"), "--checkouts", str(REPO),
                           "--models", "belle-tiny-zh", "--rows", "1,2", "--steps", "2", "--rounds", "1",
                           "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split(" | ") for line in proc.stdout.splitlines() if line.startswith("| belle-tiny-zh")]
    assert [r[1] for r in rows] == ["1", "2"]
    for r in rows:
        ms = float(r[2].split()[0])  # "1.30 (2.59) [0.51] |"
        assert ms > 0
