"""Offline checks of the GPU deployment artifacts: the Helm chart renders into manifests that
pass Kubernetes' schemas, the compose file and Dockerfiles agree with the project's pins, and
the KServe manifests wire the same runtime. (That their health checks hit real endpoints is
checked against a running server in tests/integration/test_deploy_endpoints.py.)"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helm_python.chart import Chart

ROOT = Path(__file__).parents[2]
CHART = ROOT / "deploy" / "helm" / "reranker"
KUBERNETES = "1.30.0"
STUB = "triton_python_backend_stub"
TRITON_HEALTH = ["curl", "-fsS", "http://127.0.0.1:8000/v2/health/ready"]


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    manifests = Chart.load(CHART).render(values, name="rr", namespace="search")
    return [doc for text in manifests.values() for doc in yaml.safe_load_all(text) if doc]


def by_kind(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in documents}


@pytest.mark.parametrize(
    "values",
    [
        None,
        {
            "model": {"prebuilt": True},
            "autoscaling": {"enabled": False},
            "persistence": {"engineCache": {"enabled": False}, "models": {"existingClaim": "m"}},
            "rankService": {"apiKeySecret": "reranker-key", "apiKeysFileSecret": "teams"},
            "podDisruptionBudget": {"enabled": False},
            "service": {"headless": False},
        },
    ],
)
def test_the_chart_renders_valid_kubernetes_manifests(values: dict[str, Any] | None) -> None:
    documents = render(values)
    assert {"Deployment", "Service"} <= {d["kind"] for d in documents}
    for document in documents:
        if document["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # the Prometheus Operator's resource: checked by its own test below
        kubernetes_validate.validate(document, KUBERNETES, strict=True)


def test_the_pod_reserves_a_gpu_and_probes_real_endpoints() -> None:
    kinds = by_kind(render())
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    triton, rank = containers["triton"], containers["rank-service"]
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in rank["resources"].get("limits", {})
    assert triton["readinessProbe"]["exec"]["command"] == TRITON_HEALTH
    assert triton["livenessProbe"]["exec"]["command"][-1].endswith("/v2/health/live")
    assert rank["readinessProbe"]["grpc"]["port"] == 50051
    # Only the rank service's gRPC and HTTP doors and the two metrics ports leave the pod.
    exposed = {p["containerPort"] for c in containers.values() for p in c["ports"]}
    assert exposed == {50051, 8080, 8003, 8002}
    service = {p["name"]: p["port"] for p in kinds["Service"]["spec"]["ports"]}
    assert service == {"grpc": 50051, "http": 8080, "metrics": 8003, "triton-metrics": 8002}
    environment = {e["name"]: e.get("value") for e in rank["env"]}
    assert environment["RERANKER_HTTP_PORT"] == "8080"
    assert rank["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    (builder,) = pod["initContainers"]
    assert builder["args"][:2] == ["build", "mixedbread-ai/mxbai-rerank-xsmall-v1"]
    assert builder["args"][4:6] == ["--device", "gpu"]


ADAPTER = ROOT / "deploy" / "prometheus-adapter" / "values.yaml"


@pytest.mark.parametrize(
    ("signal", "recorded", "metric", "target"),
    [
        (
            "rowsInFlight",
            "reranker:rows_in_flight:avg1m",
            "reranker_rows_in_flight_per_pod",
            "2048",
        ),
        (
            "queueComputeRatio",
            "triton:queue_compute_ratio:rate1m",
            "triton_queue_compute_ratio",
            "500m",
        ),
    ],
)
def test_autoscaling_scales_on_the_chosen_signal_recorded_and_served_per_pod(
    signal: str, recorded: str, metric: str, target: str
) -> None:
    kinds = by_kind(render({"autoscaling": {"signal": signal}}))
    (scaled_on,) = kinds["HorizontalPodAutoscaler"]["spec"]["metrics"]
    assert scaled_on["type"] == "Pods"
    assert scaled_on["pods"]["metric"]["name"] == metric
    assert scaled_on["pods"]["target"] == {"type": "AverageValue", "averageValue": target}
    # The PrometheusRule records the series per pod; the adapter serves it by that name.
    (group,) = kinds["PrometheusRule"]["spec"]["groups"]
    rules = {rule["record"]: rule["expr"] for rule in group["rules"]}
    assert "by (namespace, pod)" in rules[recorded]
    assert 'namespace="search", pod=~"rr-reranker-.*"' in rules[recorded]
    served = {
        rule["name"]["as"]: rule["seriesQuery"]
        for rule in yaml.safe_load(ADAPTER.read_text())["rules"]["custom"]
    }
    assert served[metric].startswith(recorded + "{")


def test_the_rows_signal_reads_the_gauge_the_service_exports() -> None:
    from prometheus_client import generate_latest

    from reranker.service.metrics import ServiceMetrics

    (group,) = by_kind(render())["PrometheusRule"]["spec"]["groups"]
    (rows,) = [r["expr"] for r in group["rules"] if r["record"].startswith("reranker:")]
    exported = generate_latest(ServiceMetrics().registry).decode()
    read = re.search(r"avg_over_time\((\w+)\{", rows)
    assert read is not None and f"\n{read[1]} " in exported


def test_an_unknown_scaling_signal_is_refused_by_name() -> None:
    with pytest.raises(Exception, match=r"autoscaling\.signal must be rowsInFlight or "):
        render({"autoscaling": {"signal": "cpu"}})


def test_the_rule_can_be_left_to_an_existing_prometheus_setup() -> None:
    kinds = by_kind(render({"autoscaling": {"prometheusRule": {"enabled": False}}}))
    assert "PrometheusRule" not in kinds and "HorizontalPodAutoscaler" in kinds


def test_disruptions_are_bounded_and_clients_see_every_pod() -> None:
    kinds = by_kind(render())
    assert kinds["PodDisruptionBudget"]["spec"]["minAvailable"] == 1
    assert kinds["Service"]["spec"]["clusterIP"] == "None"  # clients round-robin over pods


def test_the_api_key_comes_from_a_secret_never_from_values() -> None:
    pod = by_kind(render({"rankService": {"apiKeySecret": "reranker-key"}}))["Deployment"]
    (rank,) = [
        c for c in pod["spec"]["template"]["spec"]["containers"] if c["name"] == "rank-service"
    ]
    (key,) = [e for e in rank["env"] if e["name"] == "RERANKER_API_KEY"]
    assert key["valueFrom"]["secretKeyRef"] == {"name": "reranker-key", "key": "api-key"}


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==(\S+)", line)
        if match:
            pins[re.sub(r"\[.*\]", "", match.group(1)).lower()] = match.group(2)
    return pins


def test_images_install_the_pinned_versions() -> None:
    requirements = _pins(ROOT / "requirements.txt")
    triton = (ROOT / "docker" / "triton.Dockerfile").read_text()
    rank = (ROOT / "docker" / "rank-service.Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    # The Triton image's release matches the tritonserver the CPU path runs (2.51 = 24.10).
    assert "nvcr.io/nvidia/tritonserver:24.10-py3" in triton
    # Both images take their versions from requirements.txt rather than restating them.
    selections = re.findall(r"grep -E '([^']+)' /tmp/requirements.txt", triton)
    for package in ("numpy", "tokenizers", "nvidia-pytriton"):
        line = f"{package}=={requirements[package]}"
        assert any(re.match(pattern, line) for pattern in selections), package
    assert "pip install -r requirements.txt" in rank
    # The torch pins the Makefile installs first (through uv) are the image's.
    torch = re.search(r"\$\(UV_INSTALL\) (torch==\S+ torchvision==\S+)", makefile)
    assert torch is not None and f"pip install {torch.group(1)} " in rank


def test_compose_runs_triton_on_the_gpu_and_the_rank_service_beside_it() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    triton, rank, models = services["triton"], services["reranker"], services["models"]
    (device,) = triton["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    assert triton["healthcheck"]["test"] == ["CMD", *TRITON_HEALTH]
    assert rank["healthcheck"]["test"][1:] == [
        "python",
        "-m",
        "reranker",
        "health",
        "--address",
        "127.0.0.1:50051",
    ]
    assert rank["network_mode"] == "service:triton"
    assert rank["depends_on"]["triton"]["condition"] == "service_healthy"
    assert triton["depends_on"]["models"]["condition"] == "service_completed_successfully"
    assert "models:/models:ro" in triton["volumes"]
    assert {"--device", "gpu"} <= set(models["command"])
    # Triton's HTTP and gRPC ports are not published.
    published = {p.split(":")[0] for p in triton["ports"]}
    assert published == {"50051", "8080", "8003", "8002"}


def test_kserve_serves_the_repository_with_this_triton_runtime() -> None:
    runtime = yaml.safe_load((ROOT / "deploy" / "kserve" / "serving-runtime.yaml").read_text())
    service = yaml.safe_load((ROOT / "deploy" / "kserve" / "inferenceservice.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert runtime["kind"] == "ClusterServingRuntime"
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    (container,) = runtime["spec"]["containers"]
    assert container["image"] == values["image"]["triton"]
    assert "--model-control-mode=none" in container["args"]
    assert runtime["spec"]["supportedModelFormats"][0]["name"] == "triton"
    assert service["kind"] == "InferenceService"
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] == "triton"
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # The runtime container itself is a valid Kubernetes container.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "runtime"},
        "spec": {"containers": [container], "volumes": runtime["spec"]["volumes"]},
    }
    kubernetes_validate.validate(pod, KUBERNETES, strict=True)


def test_kserve_puts_the_rank_service_http_door_in_front_as_the_transformer() -> None:
    service = yaml.safe_load((ROOT / "deploy" / "kserve" / "inferenceservice.yaml").read_text())
    (container,) = service["spec"]["transformer"]["containers"]
    # KServe sends the InferenceService's traffic to the transformer's first port.
    ports = [(p["name"], p["containerPort"]) for p in container["ports"]]
    assert ports == [("http1", 8080), ("grpc", 50051), ("metrics", 8003)]
    environment = {e["name"]: e["value"] for e in container["env"]}
    assert environment["RERANKER_HTTP_PORT"] == "8080"
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8080}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "transformer"},
        "spec": {"containers": [container]},
    }
    kubernetes_validate.validate(pod, KUBERNETES, strict=True)


def test_kserve_routes_to_triton_grpc_and_outlasts_an_engine_build() -> None:
    from reranker.builder.triton_configs import TENSORRT_CACHE

    text = (ROOT / "deploy" / "kserve" / "inferenceservice.yaml").read_text()
    runtime = yaml.safe_load((ROOT / "deploy" / "kserve" / "serving-runtime.yaml").read_text())
    (container,) = runtime["spec"]["containers"]
    # RawDeployment's Service exposes the first container port as port 80.
    first = container["ports"][0]["containerPort"]
    assert f"--grpc-port={first}" in container["args"]
    (transformer,) = yaml.safe_load(text)["spec"]["transformer"]["containers"]
    environment = {e["name"]: e["value"] for e in transformer["env"]}
    assert environment["RERANKER_TRITON_URL"] == "reranker-predictor:80"
    assert f":{first}" not in text
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    assert startup["httpGet"] == container["readinessProbe"]["httpGet"]
    # The rank service in front waits as long before its liveness probe may restart it.
    waits = transformer["startupProbe"]
    assert waits["grpc"] == transformer["livenessProbe"]["grpc"]
    assert (
        waits["periodSeconds"] * waits["failureThreshold"]
        >= startup["periodSeconds"] * startup["failureThreshold"]
    )
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"] for v in runtime["spec"]["volumes"]}
    assert mounts["engine-cache"] == TENSORRT_CACHE and "engine-cache" in volumes


def test_the_triton_image_stub_finds_every_library_after_the_wheel_is_gone(
    tmp_path: Path,
) -> None:
    """The Dockerfile's stub step, run on a copy of the wheel laid out as in the image's
    virtual environment; then the wheel goes, as ``pip uninstall`` takes it."""
    import shutil
    import subprocess
    import sys
    import sysconfig

    from reranker.service.triton_server import triton_home

    wheel_site = triton_home().parents[1]
    site = tmp_path / "opt" / "reranker" / "lib" / "python3.11" / "site-packages"
    stubs = site / "pytriton" / "tritonserver" / "python_backend_stubs" / "3.11"
    stubs.mkdir(parents=True)
    shutil.copy2(triton_home() / "python_backend_stubs" / "3.11" / STUB, stubs)
    (site / "nvidia_pytriton.libs").symlink_to(wheel_site / "nvidia_pytriton.libs")
    backend = tmp_path / "opt" / "tritonserver" / "backends" / "python"
    tools = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    script = ROOT / "docker" / "install-python-stub.sh"
    subprocess.run([str(script), str(site), str(backend)], check=True, env=tools)
    shutil.rmtree(site / "pytriton")
    (site / "nvidia_pytriton.libs").unlink()

    # The image's libpython3.11 comes from apt: here, the base interpreter's LIBDIR.
    libdir = sysconfig.get_config_var("LIBDIR")
    linked = subprocess.run(
        ["ldd", str(backend / STUB)],
        capture_output=True,
        text=True,
        env={**os.environ, "LD_LIBRARY_PATH": libdir},
        check=True,
    ).stdout
    assert "not found" not in linked, linked
    assert str(backend / "libcudart-") in linked, linked


def test_the_pod_volumes_belong_to_the_image_user_so_the_builder_can_write_them() -> None:
    pod = by_kind(render())["Deployment"]["spec"]["template"]["spec"]
    rank = (ROOT / "docker" / "rank-service.Dockerfile").read_text()
    gid = re.search(r"useradd .*--gid (\d+)", rank)
    assert gid is not None and pod["securityContext"]["fsGroup"] == int(gid.group(1))
    assert pod["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
    claimed = render({"persistence": {"models": {"existingClaim": "made-by-root"}}})
    spec = by_kind(claimed)["Deployment"]["spec"]["template"]["spec"]
    assert spec["securityContext"]["fsGroup"] == int(gid.group(1))


def test_the_key_file_comes_from_a_secret_mounted_where_the_setting_points() -> None:
    pod = by_kind(render({"rankService": {"apiKeysFileSecret": "teams"}}))["Deployment"]
    spec = pod["spec"]["template"]["spec"]
    (rank,) = [c for c in spec["containers"] if c["name"] == "rank-service"]
    (setting,) = [e for e in rank["env"] if e["name"] == "RERANKER_API_KEYS_FILE"]
    (mount,) = [m for m in rank["volumeMounts"] if m["name"] == "api-keys"]
    assert setting["value"] == mount["mountPath"] + "/keys.toml"
    (volume,) = [v for v in spec["volumes"] if v["name"] == "api-keys"]
    assert volume["secret"] == {"secretName": "teams"}
