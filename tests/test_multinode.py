"""A real 2-node Ray cluster on one machine: the whole pipeline as one `ray job submit`, its 2 training workers
on different nodes, checkpoints on shared storage. (The single-node cluster path, each stage as its own job and
`serve deploy`, is tests/test_job_submit.py.)"""

import json

import pytest

from tests.conftest import tiny_config
from tests.ray_head import add_node, start_head, stop_head

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def two_nodes():
    """A head plus a second node with its own temp dir, 2 logical CPUs each, torn down by PID.

    Each node runs one training worker (1 CPU); the other CPU is for Ray Data, whose read tasks
    each take a whole CPU: with 1 CPU per node they would wait forever behind the workers.
    """
    head = start_head(num_cpus=2, multinode=True)
    node = None
    try:
        node = add_node(head, num_cpus=2)
        yield head
    finally:
        if node is not None:
            node.terminate()
        stop_head(head)


def test_two_workers_on_two_nodes(two_nodes, tmp_path):
    head = two_nodes
    run_dir = tmp_path / "run"  # the same path on both nodes: the machine's disk is the shared storage
    cfg = tiny_config(run_dir, **{"train.epochs": 2, "train.num_workers": 2, "train.cpus_per_worker": 1.0,
                                  "train.placement_strategy": "STRICT_SPREAD", "compute.cpus_per_actor": 0.25})
    config_path = tmp_path / "cfg.yaml"
    config_path.write_text(cfg.to_yaml())
    sub_id, out = head.submit("jobs/pipeline.py", ["--config", str(config_path), "--samples", "0"], wait=True)
    assert out.returncode == 0, f"ray job submit exited {out.returncode}:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    info = head.wait_job(sub_id)
    assert info["status"] == "SUCCEEDED", head.job_logs(sub_id)[-4000:]
    assert "[evaluate]" in out.stdout, out.stdout[-4000:]  # the driver's own output reached the blocking client
    workers = [json.loads((run_dir / "train_workers" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    nodes = {n["node_id"] for n in head.alive_nodes()}
    assert workers[0]["node_id"] != workers[1]["node_id"]  # one worker per node
    assert {w["node_id"] for w in workers} == nodes
    checkpoints = list((run_dir / "checkpoints").glob("train-*/checkpoint_*/model.pt"))
    assert checkpoints, "no checkpoint written to the shared run directory"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["metrics"]["dssm"]["recall@10"] > 0
    for name in ("dssm", "most_popular"):
        for key in ("recall@10", "ndcg@10", "mrr@10", "recall@20"):
            assert 0.0 <= metrics["metrics"][name][key] <= 1.0, (name, key, metrics)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert set(manifest["stages"]) == {"preprocess", "train", "embed", "index", "evaluate"}
