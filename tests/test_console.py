"""The console of `make demo`'s command on tiny data: the project's own lines, in order, and none of Ray's noise."""

import os
import re
import subprocess
import sys

import yaml

from tests.conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What must not reach the console: Ray's forwarded worker output and its own log lines, Ray Train's result
# dumps, Ray Data's plans, warnings of any library, MLflow's database set-up, tracebacks, terminal codes.
NOISE = [
    r"\((raylet|RayTrainWorker|TrainController|SplitCoordinator|MapBatches|pid=)",
    r"Reporting training result", r"Execution plan of Dataset", r"Starting execution of Dataset",
    r"\b(WARNING|ERROR|INFO)\b", r"^\[?\d{4}-\d\d-\d\d[ T]\d\d:\d\d", r"\b[EW]\d{4} ", r"core_worker\.cc",
    r"(Deprecation|User|Future|Runtime)Warning", r"Creating initial MLflow database", r"Traceback", "\x1b\\[",
]


def test_demo_console_has_the_projects_lines_in_order_and_no_noise(tmp_path):
    """`python jobs/pipeline.py` (what `make demo` runs) on tiny data, tracked, its output captured (not a terminal)."""
    # Embedding and evaluation on Ray Data's actor pools (not in this process, as tiny runs are by default):
    # Ray 2.60 logs an error line for each pool unless told not to.
    cfg = tiny_config(tmp_path / "run", **{"train.epochs": 3, "train.early_stopping_patience": 0,
                                           "compute.in_process_max_users": 0})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    env = {**os.environ, "RAY_RECALL_TRACKING": "1", "PYTHONWARNINGS": "default"}  # warnings shown if raised
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "jobs/pipeline.py", "--config", str(path), "--samples", "1",
                          "--num-cpus", "3"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    lines = [line for line in text.splitlines() if line.strip()]
    noisy = [line for line in lines if any(re.search(p, line) for p in NOISE)]
    assert not noisy, "noise on the console:\n" + "\n".join(noisy[:20])

    # Every epoch once, in order, each from the training worker through the driver.
    epochs = [line for line in lines if line.startswith("[train] epoch ")]
    assert [e.split()[2] for e in epochs] == ["1/3", "2/3", "3/3"], epochs
    # The stages' lines in pipeline order, then the metrics table, the timings, a sample and where the run is.
    marks = ["[tracking] MLflow run", "[data] reading synthetic", "[train] dssm", "[train] epoch 1/3",
             "[train] epoch 3/3", "[train] best epoch", "[embed]", "[index]", "[evaluate] test:", "method ",
             "dssm ", "most_popular ", "Stage timings", "Sample recommendations", "Run directory:"]
    at = [next((i for i, line in enumerate(lines) if line.startswith(m)), None) for m in marks]
    assert None not in at, [m for m, i in zip(marks, at) if i is None]
    assert at == sorted(at), list(zip(marks, at))
    # The closing curl asks for a user the run has (ids are the log's own: here numbers from 1001).
    from ray_recall.rundir import RunDir

    first_user = RunDir(cfg.run_dir).read_user_vocab().first(1)[0]
    assert lines[-1].startswith("Then:  curl ") and lines[-1].endswith(f"""-d '{{"user_id": {first_user}, "k": 10}}'"""), \
        lines[-1]


def test_progress_off_a_terminal_is_a_line_now_and_then_with_the_time_left():
    """Where nothing can be redrawn (a log file, `ray job logs`), a long epoch still shows it moves: once it has run
    `every` seconds, a plain line at most that often, the time left at the rate seen since the label's first report."""
    from ray_recall.runtime import _Lines

    got = []
    lines = _Lines(got.append, every=0.0)
    lines.draw("[train] epoch 1/2", 0, 1000, "targets", at=100.0)
    lines.draw("[train] epoch 1/2", 250, 1000, "targets", at=160.0)  # 250 in 60 s: 750 more take 180 s
    lines.draw("[train] epoch 1/2", 900, 1000, "targets", at=316.0)  # 900 in 216 s: 100 more take 24 s
    lines.draw("[train] epoch 2/2", 0, 1000, "targets", at=400.0)  # a new label starts its own rate
    assert got == ["[train] epoch 1/2: 0 of 1,000 targets (0%)",
                   "[train] epoch 1/2: 250 of 1,000 targets (25%), about 3 min left",
                   "[train] epoch 1/2: 900 of 1,000 targets (90%), about 24 s left",
                   "[train] epoch 2/2: 0 of 1,000 targets (0%)"]
    quiet = _Lines(got.append, every=60.0)
    quiet.last -= 120  # the last line long ago, yet an epoch that has run less than a minute shows nothing
    quiet.draw("[train] epoch 1/2", 0, 1000, "targets", at=0.0)
    quiet.draw("[train] epoch 1/2", 500, 1000, "targets", at=59.0)
    assert len(got) == 4
    quiet.draw("[train] epoch 1/2", 600, 1000, "targets", at=60.0)
    assert got[4:] == ["[train] epoch 1/2: 600 of 1,000 targets (60%), about 40 s left"]
    quiet.draw("[train] epoch 1/2", 700, 1000, "targets", at=90.0)  # within a minute of the last line: nothing
    assert len(got) == 5


def test_worker_progress_reaches_a_log_in_order_with_its_lines(ray_session, monkeypatch):
    """Through the real sink (a Ray queue) a worker's progress and lines arrive in the order sent; off a terminal
    (as here) the progress is a line of its own."""
    from ray_recall import runtime

    monkeypatch.setattr(runtime, "PLAIN_PROGRESS_S", 0.0)
    got = []
    with runtime.worker_lines(got.append) as sink:
        runtime.emit_progress(sink, "[train] epoch 1/1", 10, 40, "targets")
        runtime.emit(sink, "[train] epoch 1/1 loss 1.0000")
    assert got[0].startswith("[train] epoch 1/1: 10 of 40 targets (25%)") and got[1:] == ["[train] epoch 1/1 loss 1.0000"], got
