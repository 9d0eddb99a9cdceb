"""Every shipped cluster config, checked as far as possible without a cloud account or Kubernetes.

- cluster/ray-cluster.yaml goes through the launcher's own preparation and schema validation
  (`prepare_config` fills in the AWS defaults that ship with Ray; no credentials needed).
- cluster/local-autoscaling.yaml is validated the way the autoscaler validates it at start
  (tests/test_autoscaling.py runs it for real).
- The KubeRay manifests are checked field by field: KubeRay's CRDs are not available offline.
- The Serve configs are validated by Serve's own schema, and the application they import is
  built the way Serve's controller builds it.
Everywhere: integer resources, min <= max, entry points and configs that exist in the
repository, and a control plane that is either bound to loopback or behind token auth.
"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
LAUNCHER = CLUSTER / "ray-cluster.yaml"
LOCAL = CLUSTER / "local-autoscaling.yaml"
SERVE = CLUSTER / "serve.yaml"
KUBERAY = CLUSTER / "kuberay"
IMAGE_DIR = "/home/ray/ray_recall"  # where cluster/Dockerfile puts the project
IMPORT_PATH = "ray_recall.serve.app:app_builder"


def _load(path: Path):
    return yaml.safe_load(path.read_text())


def _kuberay(name: str) -> dict:
    docs = list(yaml.safe_load_all((KUBERAY / name).read_text()))
    assert len(docs) == 1, f"{name}: one object per file"
    return docs[0]


def _cluster_spec(name: str) -> dict:
    """The RayCluster spec inside any of the three KubeRay objects."""
    obj = _kuberay(name)
    return {"RayCluster": lambda s: s, "RayJob": lambda s: s["rayClusterSpec"],
            "RayService": lambda s: s["rayClusterConfig"]}[obj["kind"]](obj["spec"])


KUBERAY_CLUSTERS = ["raycluster.yaml", "rayjob.yaml", "rayservice.yaml"]


# ---------------------------------------------------------------------------- every file

def test_every_yaml_under_cluster_parses_and_is_tested():
    files = sorted(p.relative_to(CLUSTER).as_posix() for p in CLUSTER.rglob("*.yaml"))
    for f in files:
        list(yaml.safe_load_all((CLUSTER / f).read_text()))
    known = {"ray-cluster.yaml", "local-autoscaling.yaml", "serve.yaml", "kuberay/storage.yaml",
             *(f"kuberay/{n}" for n in KUBERAY_CLUSTERS)}
    assert set(files) == known, f"a config without checks here: {sorted(set(files) - known)}"


def test_every_job_and_config_named_in_cluster_files_exists():
    """Comments and commands name jobs/*.py and configs/*.yaml: a rename must not leave them dangling."""
    named = set()
    for path in CLUSTER.rglob("*"):
        if path.is_file():
            named |= set(re.findall(r"\b(?:jobs/\w+\.py|configs/[\w.-]+\.yaml)", path.read_text()))
    assert named, "the cluster files should name the job entry points they run"
    missing = sorted(n for n in named if not (REPO / n).is_file())
    assert not missing, missing


# ---------------------------------------------------------------------------- launcher

def _launcher():
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(_load(LAUNCHER))
    validate_config(prepared)
    return prepared


def test_launcher_config_passes_rays_own_validation():
    cfg = _launcher()
    assert cfg["provider"]["type"] == "aws"
    assert cfg["upscaling_speed"] > 0 and cfg["idle_timeout_minutes"] > 0


def test_launcher_node_types_head_cpu_gpu_with_integer_resources_and_bounds():
    cfg = _launcher()
    types = cfg["available_node_types"]
    head = cfg["head_node_type"]
    assert types[head]["max_workers"] == 0
    workers = {k: v for k, v in types.items() if k != head}
    gpu = [k for k, v in workers.items() if v["resources"].get("GPU", 0) > 0]
    cpu = [k for k, v in workers.items() if v["resources"].get("GPU", 0) == 0 and v["resources"].get("CPU", 0) > 0]
    assert gpu and cpu, f"want a CPU and a GPU worker type: {workers}"
    for name, t in types.items():
        for res, n in t["resources"].items():
            assert isinstance(n, int) and not isinstance(n, bool) and n >= 0, (name, res, n)
        assert 0 <= t["min_workers"] <= t["max_workers"] <= cfg["max_workers"], (name, t)
    assert sum(t["min_workers"] for t in workers.values()) <= cfg["max_workers"]


def _pip_steps(commands: list[str]) -> list[str]:
    return [c for c in commands if "pip install" in c]


@pytest.mark.parametrize("node_type", [None, "gpu_worker"])
def test_launcher_setup_installs_torch_then_project_then_recbole_without_deps(node_type):
    raw = _load(LAUNCHER)
    commands = raw["setup_commands"] if node_type is None else raw["available_node_types"][node_type]["worker_setup_commands"]
    steps = _pip_steps(commands)
    assert "torch==2.13.0" in steps[0], steps
    assert "ray_recall" in steps[1], steps
    assert "--no-deps" in steps[2] and "recbole==1.2.1" in steps[2], steps
    if node_type == "gpu_worker":
        assert "whl/cpu" not in steps[0], "GPU nodes need PyTorch's CUDA wheels"
    else:
        assert "whl/cpu" in steps[0], "CPU nodes should not download CUDA wheels"


def test_launcher_uploads_this_repository_and_the_auth_token():
    raw = _load(LAUNCHER)
    mounts = raw["file_mounts"]
    # `ray up` runs from the repository root (README): "." must be the project.
    assert (REPO / mounts["~/ray_recall"] / "pyproject.toml").is_file()
    assert mounts["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert ".venv" in raw["rsync_exclude"]


def test_launcher_dashboard_on_loopback_and_token_auth_on_every_node():
    raw = _load(LAUNCHER)
    head_start = " ".join(raw["head_start_ray_commands"])
    assert re.search(r"--dashboard-host[ =]127\.0\.0\.1", head_start), head_start
    assert "0.0.0.0" not in head_start
    assert "RAY_AUTH_MODE=token" in head_start
    assert "RAY_AUTH_MODE=token" in " ".join(raw["worker_start_ray_commands"])
    assert "ray dashboard cluster/ray-cluster.yaml" in LAUNCHER.read_text()  # how to reach it


def test_launcher_images_match_the_installed_ray():
    """Client and cluster must run the same Ray: a version bump has to update the images too."""
    raw = _load(LAUNCHER)
    images = [raw["docker"]["image"]] + [t["docker"]["worker_image"] for t in raw["available_node_types"].values()
                                         if "docker" in t]
    for image in images:
        assert image.startswith(f"rayproject/ray:{ray.__version__}-"), image
    assert any(i.endswith("-gpu") for i in images)


# ---------------------------------------------------------------------------- local autoscaling

def test_local_autoscaling_config_validates_like_the_autoscaler_does():
    from ray.autoscaler._private.util import validate_config

    cfg = _load(LOCAL)
    # The monitor validates the raw file (Ray's wheel has no defaults for this provider).
    validate_config(cfg)
    assert cfg["provider"]["type"] == "fake_multinode"
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] == "ray.head.default" and cfg["head_node_type"] in types
    worker = types["ray.worker.cpu"]
    assert worker["resources"] == {"CPU": 1}
    assert worker["min_workers"] == 0 and worker["max_workers"] == 2 <= cfg["max_workers"]
    for t in types.values():
        assert all(isinstance(n, int) for n in t["resources"].values()), t
    assert "--dashboard-host 127.0.0.1" in LOCAL.read_text()


# ---------------------------------------------------------------------------- KubeRay

@pytest.mark.parametrize("name,kind", [("raycluster.yaml", "RayCluster"), ("rayjob.yaml", "RayJob"),
                                       ("rayservice.yaml", "RayService")])
def test_kuberay_object_kind_and_api(name, kind):
    obj = _kuberay(name)
    assert obj["apiVersion"] == "ray.io/v1" and obj["kind"] == kind
    assert obj["metadata"]["name"]


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def _whole(quantity) -> int:
    """A Kubernetes quantity that must be a whole number of CPUs/GPUs ("8", 8), as an int."""
    s = str(quantity)
    assert re.fullmatch(r"\d+", s), f"{quantity!r} is not a whole number (Ray's resources are integers here)"
    return int(s)


@pytest.mark.parametrize("name", KUBERAY_CLUSTERS)
def test_kuberay_cluster_autoscaling_groups_and_resources(name):
    spec = _cluster_spec(name)
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["rayVersion"] == ray.__version__
    groups = spec["workerGroupSpecs"]
    assert len({g["groupName"] for g in groups}) == len(groups)
    for g in [spec["headGroupSpec"], *groups]:
        for c in _containers(g):
            res = c["resources"]
            # Ray sizes itself from the limits; requests == limits keeps the pod's QoS Guaranteed.
            assert res["requests"] == res["limits"], (name, c["name"], res)
            _whole(res["limits"]["cpu"])
            if "nvidia.com/gpu" in res["limits"]:
                assert _whole(res["limits"]["nvidia.com/gpu"]) >= 1
    for g in groups:
        assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"], (name, g["groupName"])
        assert g["maxReplicas"] >= 1
    start = spec["headGroupSpec"]["rayStartParams"]
    assert _whole(start.get("num-cpus", "0")) == 0


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_training_clusters_have_cpu_and_gpu_groups(name):
    groups = _cluster_spec(name)["workerGroupSpecs"]
    gpu = [g for g in groups if any("nvidia.com/gpu" in c["resources"]["limits"] for c in _containers(g))]
    cpu = [g for g in groups if g not in gpu]
    assert gpu and cpu, [g["groupName"] for g in groups]
    assert all(g["minReplicas"] == 0 for g in gpu), "GPU pods should exist only while a job asks for GPUs"
    assert all(c["image"].endswith("-gpu") for g in gpu for c in _containers(g))


@pytest.mark.parametrize("name", KUBERAY_CLUSTERS)
def test_kuberay_control_plane_behind_token_auth_and_not_exposed(name):
    spec = _cluster_spec(name)
    assert spec["authOptions"]["mode"] == "token"
    assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    text = (KUBERAY / name).read_text()
    assert "port-forward" in text, "document how people reach the dashboard"


@pytest.mark.parametrize("name", KUBERAY_CLUSTERS)
def test_kuberay_pods_mount_the_shared_run_volume(name):
    claim = _kuberay("storage.yaml")
    assert claim["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in claim["spec"]["accessModes"]
    spec = _cluster_spec(name)
    for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        pod = g["template"]["spec"]
        vols = {v["name"]: v for v in pod["volumes"]}
        for c in pod["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert "/mnt/runs" in mounts, (name, c["name"])
            assert vols[mounts["/mnt/runs"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


def test_rayjob_entrypoint_is_a_valid_pipeline_command_in_the_image():
    from ray_recall.cli import _parser, load_config

    spec = _kuberay("rayjob.yaml")["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", "jobs/pipeline.py"], argv
    assert (REPO / argv[1]).is_file()
    # The job runs in the image's copy of the repository (cluster/Dockerfile).
    assert yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"] == IMAGE_DIR
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"WORKDIR {IMAGE_DIR}" in dockerfile
    for part in ("jobs", "configs", "ray_recall"):
        assert f"{IMAGE_DIR}/{part}" in dockerfile, part
    # The same parser and config loader the job runs: the config exists and every --set is valid.
    args = _parser().parse_args(["pipeline", *argv[2:]])
    assert (REPO / args.config).is_file()
    cfg = load_config(type(args)(**{**vars(args), "config": str(REPO / args.config)}))
    assert cfg.run_dir.startswith("/mnt/runs/"), cfg.run_dir
    assert spec["shutdownAfterJobFinishes"] is True


# ---------------------------------------------------------------------------- Serve

def _serve_configs() -> dict[str, dict]:
    service = _kuberay("rayservice.yaml")["spec"]["serveConfigV2"]
    return {"serve.yaml": _load(SERVE), "rayservice.yaml": yaml.safe_load(service)}


@pytest.mark.parametrize("which", ["serve.yaml", "rayservice.yaml"])
def test_serve_config_validates_and_builds_the_recall_app(which):
    from ray.serve._private.build_app import build_app
    from ray.serve.schema import ServeDeploySchema

    raw = _serve_configs()[which]
    schema = ServeDeploySchema.model_validate(raw)
    (app,) = schema.applications
    assert app.route_prefix == "/" and app.import_path == IMPORT_PATH
    run_dir = app.args["run_dir"]
    # Replicas run in Ray workers' working directories and possibly on other nodes.
    assert run_dir.startswith("/") or "://" in run_dir, run_dir

    module, attr = app.import_path.split(":")
    builder = getattr(importlib.import_module(module), attr)
    assert callable(builder)
    # What Serve's controller does with the config: call the builder with args, build the app.
    built = build_app(builder(app.args), name=app.name)
    names = {d.name for d in built.deployments}
    for d in app.deployments:
        assert d.name in names, f"{which} configures {d.name!r}; the app has {sorted(names)}"
        bounds = d.autoscaling_config if isinstance(d.autoscaling_config, dict) else None
        if bounds:
            assert d.num_replicas == "auto"
            assert 1 <= bounds["min_replicas"] <= bounds["max_replicas"]
        else:
            assert isinstance(d.num_replicas, int) and d.num_replicas >= 1


def test_serve_yaml_proxy_listens_on_loopback():
    raw = _load(SERVE)
    assert raw["http_options"]["host"] == "127.0.0.1"
