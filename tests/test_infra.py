"""infra/: the compose file and Kubernetes manifests parse, match the real KubeRay and Kubernetes
schemas (vendored in tests/data/crds, no cluster or docker needed) and never hold a secret."""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes.client
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
COMPOSE_FILE = INFRA / "docker-compose.yml"
RAYCRONJOB_CRD = REPO / "tests" / "data" / "crds" / "ray.io_raycronjobs.yaml"

API_KEY_ENV = "COLRAY_SINK__API_KEY"
SECRET_NAME = "colray-qdrant"
SECRET_KEY = "api-key"
SECRET_PLACEHOLDER = "REPLACE_ME"
ELIDED = "x-colray-elided"  # marks a core/v1 subtree cut from the vendored CRD (see its README)
ELIDED_MODELS = {"io.k8s.api.core.v1.PodTemplateSpec": "V1PodTemplateSpec"}
# Kubernetes quantities are int-or-string on the wire ("nvidia.com/gpu: 1"), but the client's
# models type them str only; these keys hold quantities (maps of them, or one).
QUANTITY_MAPS = {"limits", "requests", "overhead"}
QUANTITY_SCALARS = {"sizeLimit", "divisor"}

Doc = dict[str, Any]


def infra_yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in {".yaml", ".yml"})


def load_docs(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def load_manifest(name: str) -> Doc:
    (doc,) = load_docs(K8S / name)
    return doc


# --- schemas -------------------------------------------------------------------------------


@functools.cache
def raycronjob_schema() -> Doc:
    (crd,) = load_docs(RAYCRONJOB_CRD)
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1" and v["served"]]
    return served["schema"]["openAPIV3Schema"]


def schema_for(kind: str) -> Doc:
    """RayJob's spec is RayCronJob's jobTemplate and RayCluster's is its rayClusterSpec: the
    same Go types, so controller-gen gives them the same schema (tests/data/crds/README.md)."""
    root = copy.deepcopy(raycronjob_schema())
    job_spec = root["properties"]["spec"]["properties"]["jobTemplate"]
    specs = {
        "RayCronJob": root["properties"]["spec"],
        "RayJob": job_spec,
        "RayCluster": job_spec["properties"]["rayClusterSpec"],
    }
    root["properties"]["spec"] = specs[kind]
    del root["properties"]["status"]  # manifests carry none; the API server ignores it
    return root


def as_jsonschema(node: Any) -> Any:
    """The CRD's OpenAPI v3 schema as JSON Schema: jsonschema ignores the x-kubernetes-*
    keywords by itself, except int-or-string, which means a type it must know about."""
    if isinstance(node, list):
        return [as_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: as_jsonschema(value) for key, value in node.items()}
    if converted.get("x-kubernetes-int-or-string") and "anyOf" not in converted:
        converted["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        converted.pop("type", None)
    return converted


# --- checks --------------------------------------------------------------------------------


@functools.cache
def api_client() -> kubernetes.client.ApiClient:
    return kubernetes.client.ApiClient()


def quantities_as_strings(node: Any, key: str = "") -> Any:
    if isinstance(node, dict):
        if key in QUANTITY_MAPS:
            return {k: str(v) if is_number(v) else v for k, v in node.items()}
        return {k: quantities_as_strings(v, k) for k, v in node.items()}
    if isinstance(node, list):
        return [quantities_as_strings(item) for item in node]
    return str(node) if key in QUANTITY_SCALARS and is_number(node) else node


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def differences(sent: Any, echoed: Any, where: str) -> Iterator[str]:
    """Where the model's re-serialisation differs from the input: a key it does not know
    (the API server would drop it) or a value it changed."""
    if isinstance(sent, dict) and isinstance(echoed, dict):
        for key, value in sent.items():
            if key not in echoed:
                yield f"{where}.{key}: unknown field (the API server would drop it)"
            else:
                yield from differences(value, echoed[key], f"{where}.{key}")
    elif isinstance(sent, list) and isinstance(echoed, list) and len(sent) == len(echoed):
        for index, (item, echo) in enumerate(zip(sent, echoed, strict=True)):
            yield from differences(item, echo, f"{where}[{index}]")
    elif sent != echoed:
        yield f"{where}: {sent!r} reads back as {echoed!r}"


def model_problems(doc: Any, model: str, where: str) -> list[str]:
    """Checks a core Kubernetes object with the kubernetes client's (strict, pydantic) model."""
    sent = quantities_as_strings(doc)
    try:
        parsed = getattr(kubernetes.client, model).from_dict(sent)
    except ValueError as exc:  # pydantic's ValidationError: a wrong type or a missing field
        return [f"{where}: {model}: {' '.join(str(exc).split())}"]
    echoed = api_client().sanitize_for_serialization(parsed)
    return list(differences(sent, echoed, where))


def undeclared_fields(instance: Any, schema: Doc, where: str) -> Iterator[str]:
    """Keys the schema does not declare. jsonschema allows them, but the API server prunes
    them from a CRD object without a word, so a typo'd field would silently do nothing."""
    if ELIDED in schema:
        yield from model_problems(instance, ELIDED_MODELS[schema[ELIDED]], where)
        return
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(instance, dict):
        declared = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, value in instance.items():
            if declared is not None and key in declared:
                yield from undeclared_fields(value, declared[key], f"{where}.{key}")
            elif isinstance(extra, dict):
                yield from undeclared_fields(value, extra, f"{where}.{key}")
            elif declared is not None and extra is None:
                yield f"{where}.{key}: not in the schema (the API server would drop it)"
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(instance):
            yield from undeclared_fields(item, schema["items"], f"{where}[{index}]")


def kuberay_problems(doc: Doc) -> list[str]:
    schema = schema_for(doc["kind"])
    validator = jsonschema.Draft7Validator(as_jsonschema(schema))
    problems = [
        f"{error.json_path}: {error.message}"
        for error in sorted(validator.iter_errors(doc), key=lambda e: e.json_path)
    ]
    problems += undeclared_fields(doc, schema, "$")
    # The CRD types metadata as a bare object; the API server checks it as ObjectMeta.
    problems += model_problems(doc.get("metadata", {}), "V1ObjectMeta", "$.metadata")
    return problems


def cronjob_problems(doc: Doc) -> list[str]:
    problems = model_problems(doc, "V1CronJob", "$")
    if (doc.get("apiVersion"), doc.get("kind")) != ("batch/v1", "CronJob"):
        problems.append(f"$: {doc.get('apiVersion')}/{doc.get('kind')} is not batch/v1 CronJob")
    return problems


def env_entries(node: Any) -> Iterator[Doc]:
    """Every Kubernetes env entry ({name, value | valueFrom}) anywhere in a manifest."""
    if isinstance(node, dict):
        if "name" in node and ("value" in node or "valueFrom" in node):
            yield node
        for value in node.values():
            yield from env_entries(value)
    elif isinstance(node, list):
        for item in node:
            yield from env_entries(item)


def k8s_secret_problems(doc: Doc) -> list[str]:
    problems = []
    for entry in env_entries(doc):
        if entry["name"] != API_KEY_ENV:
            continue
        ref = entry.get("valueFrom", {}).get("secretKeyRef", {})
        if "value" in entry or (ref.get("name"), ref.get("key")) != (SECRET_NAME, SECRET_KEY):
            problems.append(f"{API_KEY_ENV} must come from secretKeyRef {SECRET_NAME}/{SECRET_KEY}")
    return problems


INTERPOLATED_KEY = re.compile(r"\$\{" + API_KEY_ENV + r"(:?[?-][^}]*)?\}")


def compose_secret_problems(compose: Doc) -> list[str]:
    problems = []
    for name, service in compose["services"].items():
        environment = service.get("environment", {})
        if isinstance(environment, list):
            environment = dict(item.partition("=")[::2] for item in environment)
        for key, value in environment.items():
            holds_key = key in {API_KEY_ENV, "QDRANT__SERVICE__API_KEY"}
            if holds_key and not INTERPOLATED_KEY.fullmatch(str(value)):
                problems.append(f"{name}.{key}: only ${{{API_KEY_ENV}...}} interpolation")
    return problems


def ray_cluster_specs() -> dict[str, Doc]:
    cron_job_template = load_manifest("raycronjob.yaml")["spec"]["jobTemplate"]
    return {
        "raycluster.yaml": load_manifest("raycluster.yaml")["spec"],
        "rayjob.yaml": load_manifest("rayjob.yaml")["spec"]["rayClusterSpec"],
        "raycronjob.yaml": cron_job_template["rayClusterSpec"],
    }


def pod_templates(cluster_spec: Doc) -> list[Doc]:
    return [cluster_spec["headGroupSpec"]["template"]] + [
        group["template"] for group in cluster_spec["workerGroupSpecs"]
    ]


# --- every file ----------------------------------------------------------------------------


def test_infra_has_the_expected_files() -> None:
    expected = {
        "Dockerfile",
        "README.md",
        "docker-compose.yml",
        "k8s/raycluster.yaml",
        "k8s/rayjob.yaml",
        "k8s/raycronjob.yaml",
        "k8s/cronjob.yaml",
        "k8s/secret.example.yaml",
    }
    present = {p.relative_to(INFRA).as_posix() for p in INFRA.rglob("*") if p.is_file()}
    assert expected <= present, expected - present


@pytest.mark.parametrize("path", infra_yaml_files(), ids=lambda p: p.relative_to(INFRA).as_posix())
def test_every_yaml_file_parses(path: Path) -> None:
    docs = load_docs(path)
    assert docs and all(isinstance(doc, dict) for doc in docs)


def test_referenced_jobs_and_configs_exist() -> None:
    # The RayJob entrypoints and the CronJob run these paths inside the image, which copies
    # them from the repository: a rename here would only fail on the cluster.
    pattern = re.compile(r"\b(?:jobs|configs)/[\w.-]+\.(?:py|ya?ml)\b")
    referenced = {
        match: path.relative_to(REPO).as_posix()
        for path in INFRA.rglob("*")
        if path.is_file()
        for match in pattern.findall(path.read_text())
    }
    assert {"jobs/ingest.py", "jobs/reindex.py"} <= set(referenced)
    missing = {ref: where for ref, where in referenced.items() if not (REPO / ref).is_file()}
    assert not missing, f"referenced but not in the repository: {missing}"


# --- KubeRay manifests -----------------------------------------------------------------------


def test_vendored_crd_is_a_valid_schema() -> None:
    for kind in ("RayCluster", "RayJob", "RayCronJob"):
        jsonschema.Draft7Validator.check_schema(as_jsonschema(schema_for(kind)))


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("raycluster.yaml", "RayCluster"),
        ("rayjob.yaml", "RayJob"),
        ("raycronjob.yaml", "RayCronJob"),
    ],
)
def test_kuberay_manifest_matches_its_crd(name: str, kind: str) -> None:
    doc = load_manifest(name)
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", kind)
    assert kuberay_problems(doc) == []


def test_every_ray_cluster_is_the_same_cluster() -> None:
    # The RayJob and RayCronJob inline their cluster; kept equal to raycluster.yaml, one edit
    # (image, resources, secret) cannot miss the other two.
    specs = ray_cluster_specs()
    assert specs["rayjob.yaml"] == specs["raycluster.yaml"]
    assert specs["raycronjob.yaml"] == specs["raycluster.yaml"]


def test_cluster_has_a_gpu_worker_group_and_the_key_from_the_secret() -> None:
    spec = load_manifest("raycluster.yaml")["spec"]
    (group,) = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu-workers"]
    (container,) = group["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    for template in pod_templates(spec):
        for container in template["spec"]["containers"]:
            env = {entry["name"]: entry for entry in container["env"]}
            assert env["COLRAY_SINK__URL"]["value"].startswith("http")
            assert env[API_KEY_ENV]["valueFrom"]["secretKeyRef"] == {
                "name": SECRET_NAME,
                "key": SECRET_KEY,
            }


def test_rayjob_and_raycronjob_run_the_repository_entrypoints() -> None:
    job = load_manifest("rayjob.yaml")["spec"]
    cron = load_manifest("raycronjob.yaml")["spec"]
    assert job["entrypoint"] == "python jobs/ingest.py --config configs/colbert-qdrant-server.yaml"
    assert cron["jobTemplate"]["entrypoint"] == (
        "python jobs/reindex.py --config configs/colbert-qdrant-server.yaml --incremental"
    )
    for spec in (job, cron["jobTemplate"]):
        assert spec["submissionMode"] == "K8sJobMode"
        assert spec["shutdownAfterJobFinishes"] is True
        assert spec["ttlSecondsAfterFinished"] > 0


def test_misspelled_kuberay_field_is_caught() -> None:
    doc = load_manifest("raycluster.yaml")
    doc["spec"]["workerGroupSpec"] = doc["spec"].pop("workerGroupSpecs")
    problems = kuberay_problems(doc)
    assert any("$.spec.workerGroupSpec:" in p for p in problems), problems


@pytest.mark.parametrize(
    ("field", "value"),
    [("replicas", "1"), ("rayStartParams", {"num-gpus": 1}), ("minReplicas", None)],
)
def test_wrong_kuberay_type_is_caught(field: str, value: Any) -> None:
    doc = load_manifest("raycluster.yaml")
    doc["spec"]["workerGroupSpecs"][0][field] = value
    problems = kuberay_problems(doc)
    assert any("workerGroupSpecs[0]" in p for p in problems), problems


def test_misspelled_field_inside_a_pod_template_is_caught() -> None:
    doc = load_manifest("rayjob.yaml")
    (worker_group,) = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    (container,) = worker_group["template"]["spec"]["containers"]
    container["resource"] = container.pop("resources")
    problems = kuberay_problems(doc)
    assert any(
        p.endswith(".resource: unknown field (the API server would drop it)") for p in problems
    )


def test_wrong_type_inside_a_pod_template_is_caught() -> None:
    doc = load_manifest("raycronjob.yaml")
    head = doc["spec"]["jobTemplate"]["rayClusterSpec"]["headGroupSpec"]["template"]
    head["spec"]["containers"][0]["ports"][0]["containerPort"] = "6379"
    problems = kuberay_problems(doc)
    assert any("V1ContainerPort" in p for p in problems), problems


def test_misspelled_raycronjob_field_is_caught() -> None:
    doc = load_manifest("raycronjob.yaml")
    doc["spec"]["concurrencyPolicy"] = "Forbid"  # batch/v1 has it; RayCronJob does not
    problems = kuberay_problems(doc)
    assert any("$.spec.concurrencyPolicy:" in p for p in problems), problems


# --- the portable CronJob -------------------------------------------------------------------


def test_cronjob_matches_the_kubernetes_model() -> None:
    assert cronjob_problems(load_manifest("cronjob.yaml")) == []


def test_cronjob_submits_once_per_slot_to_the_cluster() -> None:
    cron = load_manifest("cronjob.yaml")
    cluster = load_manifest("raycluster.yaml")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["spec"]["startingDeadlineSeconds"] > 0
    assert cron["spec"]["jobTemplate"]["spec"]["backoffLimit"] >= 1
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert container["image"] == head["image"]
    head_service = f"http://{cluster['metadata']['name']}-head-svc:8265"
    assert container["command"] == [
        "colray",
        "submit",
        "--address",
        head_service,
        "--config",
        "configs/colbert-qdrant-server.yaml",
        "--reindex",
        "--incremental",
        "--schedule-slot",
        "auto",
        "--every",
        "1440",
    ]
    # --every 1440 is one slot a day, so the schedule must fire once a day: a fixed minute
    # and hour, every day.
    minute, hour, *days = cron["spec"]["schedule"].split()
    assert minute.isdigit() and hour.isdigit() and days == ["*", "*", "*"]
    assert cron["spec"]["timeZone"] in {"UTC", "Etc/UTC"}  # the slot's days are UTC days


@pytest.mark.parametrize(
    ("replaced", "field", "value"),
    [
        ("concurrencyPolicy", "concurrentPolicy", "Forbid"),  # misspelled: dropped, not Forbid
        ("startingDeadlineSeconds", "startingDeadlineSeconds", "3600"),  # a string, not int
    ],
)
def test_wrong_cronjob_field_is_caught(replaced: str, field: str, value: Any) -> None:
    doc = load_manifest("cronjob.yaml")
    del doc["spec"][replaced]
    doc["spec"][field] = value
    problems = cronjob_problems(doc)
    assert any(field in p for p in problems), problems


# --- docker compose ------------------------------------------------------------------------


def test_compose_runs_qdrant_a_head_and_a_gpu_worker() -> None:
    (compose,) = load_docs(COMPOSE_FILE)
    services = compose["services"]
    assert {"qdrant", "ray-head", "ray-gpu-worker"} <= set(services)
    image = services["qdrant"]["image"]
    assert re.fullmatch(r"qdrant/qdrant:v\d+\.\d+\.\d+", image), image
    assert services["qdrant"]["volumes"]
    head, worker = services["ray-head"], services["ray-gpu-worker"]
    assert "--head" in head["command"] and "--dashboard-host=0.0.0.0" in head["command"]
    assert any(str(port).endswith(":8265") for port in head["ports"])
    assert "--address=ray-head:6379" in worker["command"] and "--num-gpus=1" in worker["command"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == 1
    assert "gpu" in device["capabilities"]
    for node in (head, worker):
        assert node["build"]["dockerfile"] == "infra/Dockerfile"
        assert node["shm_size"]
        assert node["environment"]["COLRAY_SINK__URL"] == "http://qdrant:6333"


# --- secrets -------------------------------------------------------------------------------


def test_compose_takes_the_key_only_by_interpolation() -> None:
    (compose,) = load_docs(COMPOSE_FILE)
    assert compose_secret_problems(compose) == []
    assert compose["services"]["qdrant"]["environment"]["QDRANT__SERVICE__API_KEY"]


def test_literal_key_in_compose_is_caught() -> None:
    (compose,) = load_docs(COMPOSE_FILE)
    compose["services"]["ray-head"]["environment"] = {API_KEY_ENV: "0123456789abcdef"}
    assert compose_secret_problems(compose) == [
        f"ray-head.{API_KEY_ENV}: only ${{{API_KEY_ENV}...}} interpolation"
    ]


@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_manifests_take_the_key_only_from_the_secret(path: Path) -> None:
    for doc in load_docs(path):
        assert k8s_secret_problems(doc) == []


def test_literal_key_in_a_manifest_is_caught() -> None:
    doc = load_manifest("raycluster.yaml")
    env = doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    (entry,) = [e for e in env if e["name"] == API_KEY_ENV]
    entry.pop("valueFrom")
    entry["value"] = "0123456789abcdef"
    assert k8s_secret_problems(doc) == [
        f"{API_KEY_ENV} must come from secretKeyRef {SECRET_NAME}/{SECRET_KEY}"
    ]


def test_example_secret_holds_the_placeholder_only() -> None:
    secret = load_manifest("secret.example.yaml")
    assert model_problems(secret, "V1Secret", "$") == []
    assert secret["metadata"]["name"] == SECRET_NAME
    assert secret["stringData"] == {SECRET_KEY: SECRET_PLACEHOLDER}
    assert "data" not in secret


def test_no_file_assigns_a_literal_key() -> None:
    # Catches what the structured checks cannot see: a key in the Dockerfile, a comment, the
    # README. A value is fine when it is an interpolation or substitution ($...), the
    # placeholder, or absent (valueFrom follows on the next line). A name inside ${...} is
    # the interpolation itself, not an assignment.
    assignment = re.compile(r"(?i)(?<![\w${])\w*api[_-]?key\w*\s*[:=][ \t]*([^\s#]*)")
    allowed = re.compile(rf"\$.*|{SECRET_PLACEHOLDER}|")
    found = [
        f"{path.relative_to(REPO)}: {match.group(0)}"
        for path in INFRA.rglob("*")
        if path.is_file()
        for match in assignment.finditer(path.read_text())
        if not allowed.fullmatch(match.group(1).strip("\"'`"))
    ]
    assert found == []


# --- metrics: Prometheus and Grafana -----------------------------------------------------


def exported_names() -> set[str]:
    """What Prometheus sees for colray's metrics: Ray prefixes ray_, counters end in _total."""
    from colray.metrics import METRICS

    names = set()
    for name, (kind, _, _) in METRICS.items():
        if kind == "counter":
            names.add(f"ray_{name}_total")
        elif kind == "histogram":
            names |= {f"ray_{name}_{part}" for part in ("bucket", "sum", "count")}
        else:
            names.add(f"ray_{name}")
    return names


def test_prometheus_scrapes_every_ray_nodes_metrics_export_port() -> None:
    (compose,) = load_docs(COMPOSE_FILE)
    services = compose["services"]
    ports = {}
    for node in ("ray-head", "ray-gpu-worker"):
        match = re.search(r"--metrics-export-port=(\d+)", services[node]["command"])
        assert match, f"{node} does not export metrics"
        ports[node] = match.group(1)
    prometheus = services["prometheus"]
    assert any(v.endswith(":/etc/prometheus/prometheus.yml:ro") for v in prometheus["volumes"])
    (config,) = load_docs(INFRA / "prometheus.yml")
    targets = {t for job in config["scrape_configs"] for s in job["static_configs"]
               for t in s["targets"]}  # fmt: skip
    assert targets == {f"{node}:{port}" for node, port in ports.items()}
    for service in ("prometheus", "grafana"):
        assert all(str(p).startswith("127.0.0.1:") for p in services[service]["ports"])


def test_the_grafana_dashboard_charts_only_metrics_colray_exports() -> None:
    import json

    dashboard = json.loads((INFRA / "grafana" / "dashboards" / "colray.json").read_text())
    (source,) = load_docs(INFRA / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    uid = source["datasources"][0]["uid"]
    used = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid
        for target in panel["targets"]:
            used |= set(re.findall(r"\bray_colray_\w+", target["expr"]))
    assert used and used <= exported_names(), used - exported_names()
    # Every metric colray records is on the dashboard in some form.
    from colray.metrics import METRICS

    assert {n for n in METRICS} == {re.sub(r"^ray_|_(total|bucket)$", "", n) for n in used}
    (compose,) = load_docs(COMPOSE_FILE)
    mounts = compose["services"]["grafana"]["volumes"]
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in mounts
    (provider,) = load_docs(INFRA / "grafana" / "provisioning" / "dashboards" / "colray.yml")
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
