"""The driver killed (SIGKILL) in the middle of each stage, then the same command again: the same final metrics,
and no stage whose outputs were not completely written is ever taken as complete (local disk and S3).

Each run is `python -m ray_recall.cli ...` in a process of its own. A kill lands either from outside, at a
point observed in the run directory (train: once Ray Train has persisted a checkpoint), or, for the stages
a small run passes in a fraction of a second, through the test hook RAY_RECALL_FAULT=<stage>:<point>
(ray_recall/faults.py), with which the driver SIGKILLs itself at that point of the stage's write path.

Starting a Ray per run would cost about 10 s each here, so the pipeline's runs join the session's Ray
the way a job's driver joins a cluster (RAY_ADDRESS); after each kill the test waits until the session has
every CPU back, i.e. the killed driver's Train workers are gone. The S3 test's killed run starts its own
in-process Ray, as `ray-recall` does on a laptop; what is left of it is then killed by PID (every process
whose working directory is the run's own: its GCS, raylet and workers inherit the driver's), never by
`ray stop`, which would stop every Ray on the machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from tests.conftest import tiny_config
from tests.ray_head import processes_under

RUN_S = 300  # one CLI run at most, kill included


class Driver:
    """One CLI run in its own directory: joining `ray_address` (the session's Ray), or starting its own Ray."""

    def __init__(self, tmp_path: Path, name: str, args: list[str], fault: str | None = None,
                 ray_address: str | None = None):
        from ray_recall.runtime import LOCAL_ONLY_ENV

        self.cwd = tmp_path / name
        self.cwd.mkdir()
        self.log_path = self.cwd / "out.log"
        self.own_ray = ray_address is None
        env = {**os.environ, "RAY_RECALL_TRACKING": "0"}
        for key in ("RAY_ADDRESS", "RAY_RECALL_FAULT", LOCAL_ONLY_ENV):
            env.pop(key, None)
        if fault:
            env["RAY_RECALL_FAULT"] = fault
        if ray_address:
            # The session's Ray listens on 127.0.0.1 only: a process joining it must not swap that address
            # for the machine's (a job submitted to such a Ray inherits the setting the same way).
            env.update({"RAY_ADDRESS": ray_address, LOCAL_ONLY_ENV: "0"})
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "ray_recall.cli", *args], cwd=self.cwd, env=env,
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, kill_when=None) -> int:
        """The exit status (-9: killed); kill_when() is polled and the driver SIGKILLed once it is true."""
        deadline = time.monotonic() + RUN_S
        try:
            while self.proc.poll() is None:
                if kill_when is not None and kill_when():
                    os.kill(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=30)
                    break
                if time.monotonic() > deadline:
                    pytest.fail(f"the run did not end within {RUN_S} s:\n{self.log[-3000:]}")
                time.sleep(0.2)
        finally:
            self.clean_up()
        return self.proc.returncode

    def clean_up(self) -> None:
        """Kill the driver if it still runs and, for a run with its own Ray, whatever is left of that Ray."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if not self.own_ray:
            return
        deadline = time.monotonic() + 60
        while left := processes_under(str(self.cwd)):
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            assert time.monotonic() < deadline, f"processes of the killed run still running: {left}"
            time.sleep(0.5)


def _stages(run) -> set[str]:
    return set(run.manifest()["stages"])


def _ran(log: str, stage: str) -> bool:
    """Whether the run's log shows `stage` running (rather than skipped as up to date)."""
    tag = "[data]" if stage == "preprocess" else f"[{stage}]"
    return tag in log and f"[{stage}] up to date" not in log


def _temp_dirs(root: Path, name: str) -> list[Path]:
    return [p for p in root.glob(f".tmp-{name}-*") if p.is_dir()]


def _wait_cpus_back(ray, cpus: float, timeout: float = 60) -> None:
    """Until the session has `cpus` CPUs free again: the killed driver's actors and placement groups are gone."""
    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0) < cpus:
        assert time.monotonic() < deadline, f"a killed driver still holds CPUs: {ray.available_resources()}"
        time.sleep(0.5)


@pytest.mark.timeout(6 * RUN_S)
def test_killed_in_every_stage_then_rerun_gives_the_same_metrics(ray_session, trained_run, tmp_path):
    """The same `ray-recall pipeline` six times: killed in preprocess, train, embed, index and evaluate in turn,
    then left to finish. Each run takes up where the last one's manifest says it stopped, and the final
    metrics are those of the uninterrupted run of the same config (the session's `trained_run`)."""
    from ray_recall.rundir import RunDir

    ray = ray_session
    ref_cfg, _ = trained_run
    cfg = tiny_config(tmp_path / "run")
    assert cfg.section_hash("data", "model", "train", "eval") == ref_cfg.section_hash("data", "model", "train", "eval")
    (tmp_path / "tiny.yaml").write_text(cfg.to_yaml())
    args = ["pipeline", "--config", str(tmp_path / "tiny.yaml"), "--samples", "0"]
    address = ray.get_runtime_context().gcs_address
    cpus = ray.available_resources().get("CPU", 0)
    root, run = tmp_path / "run", RunDir(cfg.run_dir)

    def driver(name: str, fault: str | None = None, kill_when=None, killed: bool = True) -> Driver:
        d = Driver(tmp_path, name, args, fault, ray_address=address)
        rc = d.wait(kill_when)
        assert rc == (-signal.SIGKILL if killed else 0), f"{name}: exit status {rc}:\n{d.log[-3000:]}"
        _wait_cpus_back(ray, cpus)
        return d

    # 1. preprocess: data/ complete under its temporary name, not moved into place.
    driver("preprocess", "preprocess:staged")
    assert _temp_dirs(root, "data") and (_temp_dirs(root, "data")[0] / "meta.json").exists()
    assert not (root / "data").exists() and "preprocess" not in _stages(run)
    assert not run.stage_done("preprocess", cfg)

    # 2. train: killed from outside once Ray Train has persisted a checkpoint (a fit in progress).
    checkpoints = root / "checkpoints"
    d = driver("train", kill_when=lambda: any(checkpoints.glob("train-*/checkpoint_*/history.json")))
    assert _ran(d.log, "preprocess") and "[train]" in d.log, d.log[-3000:]
    assert _stages(run) == {"preprocess"} and not (root / "model").exists()
    assert not run.stage_done("train", cfg)

    # 3. embed: embeddings/ moved into place, then killed before the manifest records it.
    d = driver("embed", "embed:written")
    assert not _ran(d.log, "preprocess") and _ran(d.log, "train") and "resuming" not in d.log, d.log[-3000:]
    assert (root / "embeddings" / "meta.json").exists()  # complete on disk, yet:
    assert _stages(run) == {"preprocess", "train"} and not run.stage_done("embed", cfg)

    # 4. index: index/ complete under its temporary name.
    d = driver("index", "index:staged")
    assert not _ran(d.log, "train") and _ran(d.log, "embed"), d.log[-3000:]
    assert _temp_dirs(root, "index") and not (root / "index").exists()
    assert _stages(run) == {"preprocess", "train", "embed"} and not run.stage_done("index", cfg)

    # 5. evaluate: metrics.json written, the manifest not updated.
    d = driver("evaluate", "evaluate:written")
    assert not _ran(d.log, "embed") and _ran(d.log, "index"), d.log[-3000:]
    assert (root / "metrics.json").exists() and "evaluate" not in _stages(run)
    assert not run.stage_done("evaluate", cfg)

    # 6. The same command, not interrupted.
    d = driver("finish", killed=False)
    assert not _ran(d.log, "index") and _ran(d.log, "evaluate"), d.log[-3000:]
    assert _stages(run) == {"preprocess", "train", "embed", "index", "evaluate"}
    run.verify_stages("serve")  # every recorded file is the one on disk

    reference = RunDir(ref_cfg.run_dir)
    got, want = run.read_metrics(), reference.read_metrics()
    assert got["metrics"] == want["metrics"] and got["standard_errors"] == want["standard_errors"]
    untimed = lambda history: [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in history]  # noqa: E731
    assert untimed(run.read_training()["history"]) == untimed(reference.read_training()["history"])


@pytest.mark.timeout(3 * RUN_S)
def test_copy_to_s3_killed_halfway_is_never_taken_as_complete(s3, tmp_path, ray_session):
    """On an object store a finished directory is copied into place file by file: a driver killed in the middle
    leaves part of it there. Here a `--force` run of a stage recorded as done is killed so; the previous
    run's manifest entry must not survive it: the plain command then prepares the data again (rather than
    skipping it as up to date), and every file on S3 is the one the manifest records."""
    from ray_recall.pipeline import run_stage
    from ray_recall.rundir import STAGE_FILES, RunDir

    opts, fs = s3
    cfg = tiny_config(f"s3://recall/runs/faults?{opts}")
    (tmp_path / "s3.yaml").write_text(cfg.to_yaml())
    run = RunDir(cfg.run_dir)
    run_stage(cfg, "preprocess", log=lambda *_: None)  # a complete data stage, recorded
    before = run.manifest()["stages"]["preprocess"]["files"]
    assert run.stage_done("preprocess", cfg)

    args = ["preprocess", "--config", str(tmp_path / "s3.yaml")]
    d = Driver(tmp_path, "forced", [*args, "--force"], fault="preprocess:copying")  # its own in-process Ray
    assert d.wait() == -signal.SIGKILL, d.log[-3000:]
    copied = run.digests(*STAGE_FILES["preprocess"])
    staged = [i for i in fs.get_file_info(pafs.FileSelector(run.root)) if i.base_name.startswith(".tmp-data-")]
    assert staged and 0 < len(copied) < len(before), (len(copied), len(before))  # a partial data/ is there
    assert "preprocess" not in _stages(run) and not run.stage_done("preprocess", cfg)

    d = Driver(tmp_path, "again", args, ray_address=ray_session.get_runtime_context().gcs_address)
    assert d.wait() == 0, d.log[-3000:]
    assert _ran(d.log, "preprocess"), d.log[-3000:]
    run.verify_stages("train")  # what is on S3 is what the manifest recorded
    after = run.manifest()["stages"]["preprocess"]["files"]
    assert set(after) == set(before)
    same = [p for p in before if p != "data/meta.json"]  # meta.json holds the seconds it took
    assert {p: after[p] for p in same} == {p: before[p] for p in same}
