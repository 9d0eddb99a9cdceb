"""Inputs and run directories on object storage, against a real S3-compatible server (moto) on 127.0.0.1.

The endpoint travels in the URIs (`?endpoint_override=...&scheme=http`, pyarrow's S3 URI options), so
Ray's workers reach it with no endpoint in their environment; the credentials come from the environment
(tests/conftest.py sets dummy ones before Ray starts).
"""

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from ray_recall.config import PipelineConfig
from ray_recall.stages.preprocess.synthetic import generate
from ray_recall.pipeline import run_pipeline
from ray_recall.rundir import RunDir

pytest.importorskip("moto.server", reason="pip install 'moto[server]' (the test extra)")


def _cfg(path: str, run_dir: str, in_process_max_rows: int = 0) -> PipelineConfig:
    return PipelineConfig.from_dict({"run_dir": run_dir, "data": {"source": "table", "path": path, "num_partitions": 2,
                                                                  "in_process_max_rows": in_process_max_rows}})


def _files(fs, root: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    return sorted(i.path[len(root) + 1:] for i in infos if i.type == pafs.FileType.File)


def test_run_dir_replaces_directories_on_s3(s3):
    opts, fs = s3
    run = RunDir(f"s3://recall/runs/dirs?{opts}")
    assert run.uri_of("data", "x") == f"s3://recall/runs/dirs/data/x?{opts}"
    for version in (b"1", b"2"):
        with run.staged_dir("data") as tmp:
            run.write_bytes(version, tmp, "sub", "part.bin")
    with pytest.raises(RuntimeError), run.staged_dir("data") as tmp:
        run.write_bytes(b"3", tmp, "sub", "part.bin")
        raise RuntimeError("stage failed")
    assert run.read_bytes("data", "sub", "part.bin") == b"2"  # the failed write left the previous output
    assert _files(fs, "recall/runs/dirs") == ["data/sub/part.bin"]


def test_preprocess_on_s3_matches_local(s3, tmp_path, ray_session):
    opts, fs = s3
    log = generate(num_users=60, num_items=50, num_groups=3, mean_length=8, seed=3)["interactions"]
    log.to_parquet(tmp_path / "log.parquet", index=False)
    pq.write_table(pa.Table.from_pandas(log, preserve_index=False), "recall/log.parquet", filesystem=fs)

    # On S3 through Ray Data (the path of large logs); the local reference in this process (that of small ones).
    s3_cfg = _cfg(f"s3://recall/log.parquet?{opts}", f"s3://recall/runs/r1?{opts}")
    local_cfg = _cfg(str(tmp_path / "log.parquet"), str(tmp_path / "run"), in_process_max_rows=10_000)
    for cfg in (s3_cfg, local_cfg):
        run_pipeline(cfg, stages=("preprocess",), log=lambda *_: None)

    written = _files(fs, "recall/runs/r1")
    for name in ("manifest.json", "config.yaml", "data/meta.json", "data/users.parquet", "data/items.parquet"):
        assert name in written, written
    for part in ("sequences", "train", "val", "test"):
        assert any(f.startswith(f"data/{part}/") and f.endswith(".parquet") for f in written), (part, written)
    assert not any(".tmp-" in f or ".old-" in f for f in written)

    remote, local = RunDir(s3_cfg.run_dir), RunDir(local_cfg.run_dir)
    assert remote.manifest()["stages"]["preprocess"]["config_hash"] != ""
    strip = lambda m: {k: v for k, v in m.items() if k not in ("seconds", "source")}  # noqa: E731
    meta = remote.read_meta()
    assert strip(meta) == strip(local.read_meta()) and meta["source"].startswith("table s3://recall/log.parquet")
    for split in ("train", "val", "test"):
        a, b = (r.read_split(split).sort_values(["user_idx", "pos"]).reset_index(drop=True) for r in (remote, local))
        assert a.equals(b), split
    assert remote.read_items().equals(local.read_items())
    assert np.array_equal(remote.read_user_vocab().ids, local.read_user_vocab().ids)
    seq_a, seq_b = (r.read_sequences(meta["num_users"]) for r in (remote, local))
    assert np.array_equal(seq_a.offsets, seq_b.offsets) and np.array_equal(seq_a.items, seq_b.items)

    # A small log on S3 in this process: read from and written to the bucket the same way.
    small_cfg = _cfg(f"s3://recall/log.parquet?{opts}", f"s3://recall/runs/r2?{opts}", in_process_max_rows=10_000)
    lines = []
    run_pipeline(small_cfg, stages=("preprocess",), log=lines.append)
    assert any("in this process" in line for line in lines), lines
    small = RunDir(small_cfg.run_dir)
    assert strip(small.read_meta()) == strip(meta)
    for split in ("train", "val", "test"):
        assert small.read_split(split).equals(local.read_split(split)), split
