"""The Kubernetes manifests (infra/k8s): both overlays rendered by kustomize (built by ``make setup``
from the Go module proxy), then checked: every document parses and is named; names, ports, env,
topics and the consumer group agree across resources and with the settings; the RayService's
Serve config equals infra/serve/teacher.yaml (dev-cpu: GPUs off, two replicas); GPUs only in
prod-gpu; custom resources valid under their CRDs' schemas (KubeRay, KEDA, Prometheus Operator,
fetched as Go modules), unknown fields included. docs/deploy.md says what is not validated."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from schemas.settings import Settings
from streams.config import StreamSettings

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE = ROOT / ".evalloop" / "bin" / "kustomize"
MODULES = ROOT / ".evalloop" / "go" / "pkg" / "mod"
KUBERAY = "github.com/ray-project/kuberay/ray-operator@v1.5.0/config/crd/bases"
KEDA = "github.com/kedacore/keda/v2@v2.21.0/config/crd/bases"
PROMETHEUS_OPERATOR = (
    "github.com/prometheus-operator/prometheus-operator@v0.85.0/example/prometheus-operator-crd"
)
CRDS = {
    ("ray.io/v1", "RayService"): f"{KUBERAY}/ray.io_rayservices.yaml",
    ("keda.sh/v1alpha1", "ScaledObject"): f"{KEDA}/keda.sh_scaledobjects.yaml",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): f"{KEDA}/keda.sh_triggerauthentications.yaml",
    (
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
    ): f"{PROMETHEUS_OPERATOR}/monitoring.coreos.com_servicemonitors.yaml",
}
#: Created by Strimzi for the cluster, not by these manifests.
EXTERNAL_SECRETS = {"evalloop-kafka-cluster-ca-cert"}
OVERLAYS = {"dev-cpu": "evalloop-dev", "prod-gpu": "evalloop"}

Docs = list[dict[str, Any]]


def render(overlay: str) -> Docs:
    if not KUSTOMIZE.exists():
        pytest.fail(f"{KUSTOMIZE} missing: `make setup` builds kustomize from the Go module proxy")
    out = subprocess.run(
        [str(KUSTOMIZE), "build", str(ROOT / "infra" / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module", params=sorted(OVERLAYS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, Docs]:
    return request.param, render(request.param)


def one(docs: Docs, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def config(docs: Docs) -> dict[str, str]:
    data: dict[str, str] = one(docs, "ConfigMap", "evalloop-config")["data"]
    return data


def test_every_document_parses_is_named_and_in_the_overlay_namespace(rendered: tuple[str, Docs]) -> None:
    overlay, docs = rendered
    keys = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys)) and len(docs) >= 15
    for doc in docs:
        assert doc["apiVersion"] and doc["metadata"]["name"]
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == OVERLAYS[overlay], doc["metadata"]


def test_the_config_is_valid_settings(rendered: tuple[str, Docs], monkeypatch: pytest.MonkeyPatch) -> None:
    _overlay, docs = rendered
    for key, value in config(docs).items():
        monkeypatch.setenv(key, value)
    for docs_secret in (one(docs, "Secret", "evalloop-kafka-sasl"), one(docs, "Secret", "evalloop-redis")):
        for key, value in docs_secret["stringData"].items():
            monkeypatch.setenv(key, value)
    settings, stream = Settings(_env_file=None), StreamSettings(_env_file=None)  # type: ignore[call-arg]
    assert settings.kafka.security_protocol == "SASL_SSL" and stream.metrics_host == "0.0.0.0"


def _containers(docs: Docs) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            yield deployment, container


def test_references_resolve(rendered: tuple[str, Docs]) -> None:
    _overlay, docs = rendered
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    maps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    for deployment, container in _containers(docs):
        for source in container["envFrom"]:
            ref = source.get("configMapRef") or source["secretRef"]
            assert ref["name"] in maps | set(secrets), ref
        for volume in deployment["spec"]["template"]["spec"].get("volumes", []):
            assert volume["secret"]["secretName"] in set(secrets) | EXTERNAL_SECRETS
    auth = one(docs, "TriggerAuthentication", "evalloop-kafka-auth")
    for ref in auth["spec"]["secretTargetRef"]:
        if ref["name"] not in EXTERNAL_SECRETS:
            assert ref["key"] in secrets[ref["name"]]["stringData"], ref


def test_services_select_pods_and_name_their_ports(rendered: tuple[str, Docs]) -> None:
    _overlay, docs = rendered
    for service in (d for d in docs if d["kind"] == "Service"):
        pods = [
            (dep, c)
            for dep, c in _containers(docs)
            if service["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert pods, f"service {service['metadata']['name']} selects no pod"
        names = {port["name"]: port["containerPort"] for _dep, c in pods for port in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert names.get(port["targetPort"]) == port["port"], port
    monitor = one(docs, "ServiceMonitor", "evalloop-worker")
    metrics = one(docs, "Service", "evalloop-worker-metrics")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= metrics["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in metrics["spec"]["ports"]}
    assert int(config(docs)["EVALLOOP_STREAM_METRICS_PORT"]) == metrics["spec"]["ports"][0]["port"]


def test_kafka_names_agree(rendered: tuple[str, Docs]) -> None:
    _overlay, docs = rendered
    env = config(docs)
    topics = {d["spec"]["topicName"]: d["spec"] for d in docs if d["kind"] == "KafkaTopic"}
    for stage in ("EVENTS", "SAMPLES", "JUDGMENTS", "ALERTS", "DEAD_LETTERS"):
        name = env[f"EVALLOOP_TOPICS__{stage}__NAME"]
        assert topics[name]["partitions"] == int(env[f"EVALLOOP_TOPICS__{stage}__PARTITIONS"]), stage
    defaults = Settings(_env_file=None).topics  # type: ignore[call-arg]
    assert {spec.name for spec in defaults.all()} == set(topics)
    scaled = one(docs, "ScaledObject", "evalloop-worker")
    one(docs, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    for trigger in scaled["spec"]["triggers"]:
        meta = trigger["metadata"]
        assert meta["consumerGroup"] == env["EVALLOOP_STREAM_APP_ID"] and meta["topic"] in topics
        assert meta["bootstrapServers"] == env["EVALLOOP_KAFKA__BOOTSTRAP_SERVERS"]
    # More workers than events partitions would sit idle.
    assert scaled["spec"]["maxReplicaCount"] <= int(env["EVALLOOP_TOPICS__EVENTS__PARTITIONS"])


def _serve(docs: Docs) -> dict[str, Any]:
    serve: dict[str, Any] = yaml.safe_load(
        one(docs, "RayService", "evalloop-teacher")["spec"]["serveConfigV2"]
    )
    return serve


def test_serve_config_is_the_file(rendered: tuple[str, Docs]) -> None:
    overlay, docs = rendered
    expected = yaml.safe_load((ROOT / "infra" / "serve" / "teacher.yaml").read_text())
    expected.pop("http_options")  # KubeRay's proxy listens on 0.0.0.0:8000 in the cluster
    if overlay == "dev-cpu":
        for deployment in expected["applications"][0]["deployments"]:
            deployment["ray_actor_options"]["num_gpus"] = 0
            deployment["autoscaling_config"]["max_replicas"] = 2
    assert _serve(docs) == expected
    app = expected["applications"][0]
    service = one(docs, "RayService", "evalloop-teacher")["metadata"]["name"]
    assert (
        config(docs)["EVALLOOP_STREAM_TEACHER_URL"] == f"http://{service}-serve-svc:8000{app['route_prefix']}"
    )


def test_gpus_only_in_prod_and_enough_pods_for_the_replicas(rendered: tuple[str, Docs]) -> None:
    overlay, docs = rendered
    cluster = one(docs, "RayService", "evalloop-teacher")["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    (group,) = cluster["workerGroupSpecs"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    deployment = _serve(docs)["applications"][0]["deployments"][0]
    gpus = deployment["ray_actor_options"]["num_gpus"]
    assert int(limits.get("nvidia.com/gpu", 0)) == gpus == (1 if overlay == "prod-gpu" else 0)
    assert group["minReplicas"] <= deployment["autoscaling_config"]["min_replicas"]
    assert group["maxReplicas"] >= deployment["autoscaling_config"]["max_replicas"] * gpus
    if overlay == "prod-gpu":
        tolerations = group["template"]["spec"]["tolerations"]
        assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)


def _unknown_fields(value: Any, schema: dict[str, Any], path: str) -> Iterator[str]:
    """Fields a structural schema does not declare (the API server would drop them silently)."""
    if isinstance(value, dict) and "properties" in schema:
        if schema.get("x-kubernetes-preserve-unknown-fields") or schema.get("additionalProperties"):
            return
        for key, item in value.items():
            if key not in schema["properties"]:
                yield f"{path}.{key}"
            else:
                yield from _unknown_fields(item, schema["properties"][key], f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            yield from _unknown_fields(item, schema["items"], f"{path}[{index}]")


def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    path = MODULES / CRDS[(api_version, kind)]
    if not path.exists():
        pytest.fail(f"{path} missing: `make setup` downloads the CRDs' Go modules")
    crd = yaml.safe_load(path.read_text())
    version = api_version.split("/")[1]
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema: dict[str, Any] = served["schema"]["openAPIV3Schema"]
    return schema


def test_custom_resources_are_valid_under_their_crds(rendered: tuple[str, Docs]) -> None:
    _overlay, docs = rendered
    checked = 0
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key not in CRDS:
            continue
        schema = crd_schema(*key)
        jsonschema.validate(doc, schema)
        body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
        assert list(_unknown_fields(body, schema, doc["kind"])) == []
        checked += 1
    assert checked == 4


def test_the_schema_check_can_fail() -> None:
    schema = crd_schema("keda.sh/v1alpha1", "ScaledObject")
    scaled = one(render("dev-cpu"), "ScaledObject", "evalloop-worker")
    scaled["spec"]["minReplicaCount"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, schema)
    scaled["spec"]["minReplicaCount"] = 1
    scaled["spec"]["maxReplicas"] = 3  # a typo for maxReplicaCount
    assert list(_unknown_fields(scaled["spec"], schema["properties"]["spec"], "spec")) == ["spec.maxReplicas"]
