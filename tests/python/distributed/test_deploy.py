"""deploy/: the Kubernetes manifests against the real Kubernetes schemas, and the Dockerfile. Needs no server.

Schemas: kubernetes-validate ships the JSON schemas generated from Kubernetes' OpenAPI spec for every minor
version from 1.25 on, inside the wheel; `validate()` resolves every `$ref` from those files, so the check
runs offline (the `no_network` fixture makes any socket connection fail to prove it). The strict variant
sets `additionalProperties: false`, so a misspelt or misplaced field fails like a wrong type does.
`test_schema_check_can_fail` breaks a valid manifest in several ways and expects each to be rejected.

Beyond the schema: probes are gRPC probes on the port the Service and the CLI use, the worker advertises
its pod IP on its worker port, the ConfigMap holds only `tritium` variables with valid values that point
at the etcd and NATS Services, selectors match, and the Dockerfile ends in a non-root `tritium` stage.
"""

from __future__ import annotations

import copy
import json
import pathlib
import re
import shlex
import shutil
import socket
import subprocess
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from helpers import REPO

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
OVERLAY = DEPLOY / "kubernetes-discovery"
DOCKERFILE = DEPLOY / "Dockerfile"

# The oldest Kubernetes we support (gRPC probes are GA since 1.27) and the newest the package knows.
K8S_VERSIONS = ("1.30.0", max(all_versions(), key=lambda v: tuple(int(p) for p in v.split("."))))

# Every variable the ConfigMap may set, with the values `tritium` accepts (None: any non-empty string).
CONFIG_KEYS: dict[str, frozenset[str] | None] = {
    "TRITIUM_DISCOVERY": frozenset({"mem", "file", "etcd"}),
    "TRITIUM_NAMESPACE": None,
    "TRITIUM_ETCD_ENDPOINTS": None,
    "TRITIUM_LEASE_TTL_SECS": None,
    "TRITIUM_EVENTS": frozenset({"none", "nats"}),
    "TRITIUM_NATS_URL": None,
    "TRITIUM_ROUTER_MODE": frozenset({"round-robin", "random", "least-loaded", "kv", "direct"}),
    "TRITIUM_MIGRATION_LIMIT": None,
}
CONFIG_MAP = "tritium-config"
DEFAULT_GRPC_PORT = 8001
DEFAULT_HTTP_PORT = 8000
DEFAULT_METRICS_PORT = 8002
DEFAULT_WORKER_PORT = 8011
# `tritium` drains for up to TRITIUM_EXIT_TIMEOUT_SECS (default 30) after SIGTERM; the pod must allow more.
EXIT_TIMEOUT_SECS = 30
NON_NAMESPACED = {"Namespace", "CustomResourceDefinition"}


def manifest_files() -> list[pathlib.Path]:
    # kubernetes-discovery/ holds the Kubernetes-discovery overlay's own objects (its patches are in its kustomization).
    return sorted(p for p in [*K8S.glob("*.yaml"), *OVERLAY.glob("*.yaml")] if p.name != "kustomization.yaml")


def load_docs(path: pathlib.Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def all_docs() -> list[tuple[pathlib.Path, dict]]:
    return [(path, doc) for path in manifest_files() for doc in load_docs(path)]


def find(kind: str, name: str) -> dict:
    hits = [doc for _, doc in all_docs() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected exactly one {kind}/{name} in {K8S}, found {len(hits)}"
    return hits[0]


def doc_id(path: pathlib.Path, doc: dict) -> str:
    return f"{path.name}:{doc['kind']}/{doc['metadata']['name']}"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing here may reach the network: schema `$ref`s must resolve from the installed package."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"test_deploy tried to open a network connection: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def validate(doc: dict, version: str, strict: bool = True) -> None:
    used = kubernetes_validate.validate(doc, version, strict=strict)
    # validate() silently falls back to the newest schema not newer than `version`; insist on the exact one.
    assert used == ".".join(version.split(".")[:2]), f"validated against {used}, asked for {version}"


# ---------------------------------------------------------------------------------------------------------
# The schema check


def test_bundled_schemas_cover_grpc_probes():
    """The package has the versions we ask for, and their Probe schema knows the `grpc` action."""
    assert kubernetes_validate.__version__ == "1.37.0"
    for version in K8S_VERSIONS:
        for strictness in ("local", "local-strict"):
            defs_path = (
                pathlib.Path(kubernetes_validate.__file__).parent
                / "kubernetes-json-schema"
                / f"v{version}-{strictness}"
                / "_definitions.json"
            )
            defs = json.loads(defs_path.read_text())["$defs"]
            probe = defs["io.k8s.api.core.v1.Probe"]["properties"]
            assert probe["grpc"]["$ref"].endswith("io.k8s.api.core.v1.GRPCAction"), (version, strictness)
            grpc_action = defs["io.k8s.api.core.v1.GRPCAction"]
            assert grpc_action["required"] == ["port"]
            assert {"port", "service"} <= set(grpc_action["properties"])
            assert grpc_action["properties"]["port"]["type"] == "integer"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    ("path", "doc"),
    [pytest.param(path, doc, id=doc_id(path, doc)) for path, doc in all_docs()],
)
def test_manifest_matches_kubernetes_schema(path: pathlib.Path, doc: dict, version: str):
    try:
        validate(doc, version)
    except kubernetes_validate.SchemaNotFoundError as e:
        pytest.fail(f"{doc_id(path, doc)}: {e.message}", pytrace=False)
    except kubernetes_validate.ValidationError as e:
        at = ".".join(str(p) for p in e.path)
        why = f"{doc_id(path, doc)} is not a valid {doc['kind']} for Kubernetes {e.version}: {at}: {e.message}"
        pytest.fail(why, pytrace=False)


def _container(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]["containers"][0]


def _port_not_a_number(doc: dict) -> None:
    _container(doc)["ports"][0]["containerPort"] = "abc"


def _replicas_a_string(doc: dict) -> None:
    doc["spec"]["replicas"] = "2"


def _grpc_probe_without_port(doc: dict) -> None:
    _container(doc)["readinessProbe"]["grpc"] = {"service": ""}


def _grpc_probe_named_port(doc: dict) -> None:
    # httpGet and tcpSocket take a port name, grpc only a number.
    _container(doc)["livenessProbe"]["grpc"]["port"] = "grpc"


def _unknown_field_in_probe(doc: dict) -> None:
    _container(doc)["readinessProbe"]["grpc"]["serviceName"] = "inference"


def _misspelt_container_field(doc: dict) -> None:
    _container(doc)["envForm"] = _container(doc).pop("envFrom")


def _wrong_api_version(doc: dict) -> None:
    doc["apiVersion"] = "apps/v1beta1"


# (mutation, also rejected without strict?): unknown fields are caught by the strict schemas only.
BREAKAGES = [
    (_port_not_a_number, True),
    (_replicas_a_string, True),
    (_grpc_probe_without_port, True),
    (_grpc_probe_named_port, True),
    (_unknown_field_in_probe, False),
    (_misspelt_container_field, False),
    (_wrong_api_version, None),  # no schema at all: SchemaNotFoundError
]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("breakage", "loose_fails"), BREAKAGES, ids=[b.__name__.strip("_") for b, _ in BREAKAGES])
def test_schema_check_can_fail(breakage, loose_fails, version: str):
    good = find("Deployment", "tritium-frontend")
    validate(good, version)
    bad = copy.deepcopy(good)
    breakage(bad)
    if loose_fails is None:
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            validate(bad, version)
        return
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(bad, version, strict=True)
    if loose_fails:
        with pytest.raises(kubernetes_validate.ValidationError):
            validate(bad, version, strict=False)
    else:
        validate(bad, version, strict=False)


# ---------------------------------------------------------------------------------------------------------
# What the schema cannot see


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["namespace"] == "tritium"
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources)), f"duplicates in {resources}"
    assert sorted(resources) == [p.name for p in manifest_files() if p.parent == K8S]
    assert [image["name"] for image in kustomization.get("images", [])] == ["tritium"]


def test_the_discovery_overlay_lists_its_manifests_and_removes_etcd():
    overlay = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    assert overlay["namespace"] == "tritium"
    own = sorted(p.name for p in manifest_files() if p.parent == OVERLAY)
    assert overlay["resources"] == ["../kubernetes", *own]
    deleted = set()
    for patch in overlay["patches"]:
        for doc in yaml.safe_load_all(patch["patch"]):
            if isinstance(doc, dict) and doc.get("$patch") == "delete":
                deleted.add((doc["kind"], doc["metadata"]["name"]))
    etcd = {(doc["kind"], doc["metadata"]["name"]) for doc in load_docs(K8S / "etcd.yaml")}
    assert etcd == deleted, "every etcd object, and only those, is removed"
    config = next(yaml.safe_load(p["patch"]) for p in overlay["patches"] if "ConfigMap" in p["patch"])["data"]
    assert config == {"TRITIUM_DISCOVERY": "kubernetes", "TRITIUM_ETCD_ENDPOINTS": None}
    service = find("Service", "tritium-worker")
    assert service["metadata"]["labels"]["nvidia.com/dynamo-discovery-enabled"] == "true", "the labels frontends select slices by"
    role = find("Role", "tritium-discovery")
    assert {tuple(rule["resources"]) for rule in role["rules"]} == {("dynamoworkermetadatas",), ("endpointslices",)}


def test_everything_in_the_tritium_namespace():
    namespaces = [doc for _, doc in all_docs() if doc["kind"] == "Namespace"]
    assert [ns["metadata"]["name"] for ns in namespaces] == ["tritium"]
    for path, doc in all_docs():
        if doc["kind"] not in NON_NAMESPACED:
            assert doc["metadata"].get("namespace") == "tritium", doc_id(path, doc)


def test_selectors_match_pod_labels():
    workloads = {
        (doc["kind"], doc["metadata"]["name"]): doc
        for _, doc in all_docs()
        if doc["kind"] in ("Deployment", "StatefulSet")
    }
    assert set(workloads) == {
        ("StatefulSet", "etcd"),
        ("Deployment", "nats"),
        ("Deployment", "tritium-frontend"),
        ("Deployment", "tritium-worker"),
    }

    def selects(selector: dict, labels: dict) -> bool:
        return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

    pod_labels = {key: doc["spec"]["template"]["metadata"]["labels"] for key, doc in workloads.items()}
    for key, doc in workloads.items():
        assert selects(doc["spec"]["selector"]["matchLabels"], pod_labels[key]), key
    for path, doc in all_docs():
        if doc["kind"] == "Service":
            matched = [key for key, labels in pod_labels.items() if selects(doc["spec"]["selector"], labels)]
            assert len(matched) == 1, f"{doc_id(path, doc)} selects {matched}"
            containers = _pod(workloads[matched[0]])["containers"]
            pod_ports = {p["name"]: p["containerPort"] for c in containers for p in c["ports"]}
            for port in doc["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                assert target in pod_ports or target in pod_ports.values(), f"{doc_id(path, doc)}: {port}"
        if doc["kind"] == "PodDisruptionBudget":
            assert selects(doc["spec"]["selector"]["matchLabels"], pod_labels[("Deployment", "tritium-worker")])
    etcd = workloads[("StatefulSet", "etcd")]
    headless = find("Service", etcd["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert etcd["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "1Gi"


def _pod(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def _option(args: list[str], name: str) -> str | None:
    """The value of `--name V` or `--name=V` in a container's args."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _assert_grpc_probes(container: dict, port: int) -> None:
    name = container["name"]
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        probe = container.get(kind)
        if probe is None:
            assert kind == "startupProbe", f"{name} has no {kind}"
            continue
        handlers = {"grpc", "httpGet", "tcpSocket", "exec"} & set(probe)
        assert handlers == {"grpc"}, f"{name}.{kind} uses {handlers}, want a grpc probe"
        probed = probe["grpc"]["port"]
        assert probed == port, f"{name}.{kind} probes port {probed}, the server listens on {port}"
        assert probe["grpc"].get("service", "") == "", f"{name}.{kind}: the server-wide health service is \"\""


def _assert_config_map_env(container: dict) -> None:
    refs = [source["configMapRef"]["name"] for source in container.get("envFrom", []) if "configMapRef" in source]
    assert refs == [CONFIG_MAP], f"{container['name']} takes its environment from {refs}"


def _assert_runs_as_non_root(doc: dict, container: dict) -> None:
    pod = _pod(doc)
    pod_default = pod.get("securityContext", {}).get("runAsNonRoot")
    non_root = container.get("securityContext", {}).get("runAsNonRoot", pod_default)
    assert non_root is True, f"{container['name']} may run as root"
    assert pod["terminationGracePeriodSeconds"] > EXIT_TIMEOUT_SECS
    for key in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][key]), f"{container['name']} resources.{key}"


def test_frontend_probes_and_ports():
    deployment = find("Deployment", "tritium-frontend")
    service = find("Service", "tritium-frontend")
    assert deployment["spec"]["replicas"] == 2
    (container,) = _pod(deployment)["containers"]
    args = container["args"]
    assert args[0] == "serve"
    grpc_port = int(_option(args, "--grpc-port") or DEFAULT_GRPC_PORT)
    http_port = int(_option(args, "--http-port") or DEFAULT_HTTP_PORT)
    metrics_port = int(_option(args, "--metrics-port") or DEFAULT_METRICS_PORT)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": grpc_port, "http": http_port, "metrics": metrics_port}
    by_name = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(by_name) == {"grpc", "http", "metrics"}
    assert by_name["metrics"]["port"] == DEFAULT_METRICS_PORT and ports[by_name["metrics"]["targetPort"]] == metrics_port
    assert by_name["grpc"]["port"] == DEFAULT_GRPC_PORT and ports[by_name["grpc"]["targetPort"]] == grpc_port
    assert by_name["http"]["port"] == DEFAULT_HTTP_PORT and ports[by_name["http"]["targetPort"]] == http_port
    _assert_grpc_probes(container, grpc_port)
    _assert_config_map_env(container)
    _assert_runs_as_non_root(deployment, container)


def test_worker_probes_ports_and_advertise_address():
    deployment = find("Deployment", "tritium-worker")
    assert deployment["spec"]["replicas"] == 2
    (container,) = _pod(deployment)["containers"]
    args = container["args"]
    assert args[:1] == ["worker"]
    assert _option(args, "--engine") == "mock" and _option(args, "--model-name") == "mock-llm"
    env = _env(container)
    port = int(_option(args, "--worker-port") or env.get("TRITIUM_WORKER_PORT", {}).get("value") or DEFAULT_WORKER_PORT)
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"worker": port}
    _assert_grpc_probes(container, port)
    _assert_config_map_env(container)
    _assert_runs_as_non_root(deployment, container)
    # The address frontends dial: the pod IP from the downward API, on the worker port. $(VAR) expands only
    # variables defined earlier in the list.
    names = [e["name"] for e in container["env"]]
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["TRITIUM_ADVERTISE_ADDRESS"]["value"] == f"$(POD_IP):{port}"
    assert names.index("POD_IP") < names.index("TRITIUM_ADVERTISE_ADDRESS")
    assert _option(args, "--advertise-address") is None, "set the advertise address in one place"


def test_config_map_points_at_the_services():
    config = find("ConfigMap", CONFIG_MAP)["data"]
    unknown = set(config) - set(CONFIG_KEYS)
    assert not unknown, f"{CONFIG_MAP} sets variables tritium does not read: {sorted(unknown)}"
    for key, value in config.items():
        allowed = CONFIG_KEYS[key]
        assert isinstance(value, str) and value, key
        assert allowed is None or value in allowed, f"{key}={value!r}, want one of {sorted(allowed)}"
    assert config == {
        "TRITIUM_DISCOVERY": "etcd",
        "TRITIUM_ETCD_ENDPOINTS": "http://etcd:2379",
        "TRITIUM_EVENTS": "nats",
        "TRITIUM_NATS_URL": "nats://nats:4222",
        "TRITIUM_ROUTER_MODE": "kv",
        "TRITIUM_NAMESPACE": "tritium",
    }

    def service_port(url: str, scheme: str) -> None:
        parts = urlsplit(url)
        assert parts.scheme == scheme, url
        service = find("Service", parts.hostname)
        ports = {p["port"] for p in service["spec"]["ports"]}
        assert parts.port in ports, f"{url}: Service {parts.hostname} has no port {parts.port}"

    for endpoint in config["TRITIUM_ETCD_ENDPOINTS"].split(","):
        service_port(endpoint, "http")
    service_port(config["TRITIUM_NATS_URL"], "nats")


def test_infrastructure_probes():
    etcd = _pod(find("StatefulSet", "etcd"))["containers"][0]
    assert etcd["image"] == "quay.io/coreos/etcd:v3.5.17"
    assert etcd["readinessProbe"]["httpGet"]["path"] == "/health"
    assert etcd["readinessProbe"]["httpGet"]["port"] in ("client", 2379)
    nats = _pod(find("Deployment", "nats"))["containers"][0]
    assert nats["image"] == "nats:2.10-alpine"
    assert _option(nats["args"], "-m") == "8222"
    assert nats["readinessProbe"]["httpGet"]["path"] == "/healthz"
    monitor = {p["name"]: p["containerPort"] for p in nats["ports"]}
    assert monitor[nats["readinessProbe"]["httpGet"]["port"]] == 8222


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_build():
    """`kubectl kustomize` (client side only) renders the folder, with the placeholder image applied."""
    proc = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rendered = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    assert sorted(doc_id(K8S, d) for d in rendered) == sorted(doc_id(K8S, d) for p, d in all_docs() if p.parent == K8S)
    images = {c["image"] for d in rendered if "template" in d.get("spec", {}) for c in _pod(d)["containers"]}
    assert "tritium:latest" in images


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_build_of_the_discovery_overlay():
    """The overlay renders to valid objects: no etcd, the discovery objects, and workers that know their pod."""
    proc = subprocess.run(["kubectl", "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rendered = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(proc.stdout) if d}
    for doc in rendered.values():
        validate(doc, K8S_VERSIONS[0])
    assert not [key for key in rendered if "etcd" in key[1]]
    assert {("CustomResourceDefinition", "dynamoworkermetadatas.nvidia.com"), ("Role", "tritium-discovery"), ("Service", "tritium-worker")} <= set(rendered)
    assert rendered[("ConfigMap", "tritium-config")]["data"]["TRITIUM_DISCOVERY"] == "kubernetes"
    assert "TRITIUM_ETCD_ENDPOINTS" not in rendered[("ConfigMap", "tritium-config")]["data"]
    worker = _pod(rendered[("Deployment", "tritium-worker")])
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in worker["containers"][0]["env"]}
    assert (env["POD_NAME"], env["POD_UID"], env["POD_NAMESPACE"]) == ("metadata.name", "metadata.uid", "metadata.namespace")
    for name in ("tritium-worker", "tritium-frontend"):
        assert _pod(rendered[("Deployment", name)])["serviceAccountName"] == "tritium-discovery"


# ---------------------------------------------------------------------------------------------------------
# The Dockerfile


def dockerfile_stages() -> tuple[dict[str, str], list[dict]]:
    """(ARG defaults before the first FROM, stages: {"from", "name", "instructions": [(KEYWORD, rest)]})."""
    # Like Docker: comment lines go first (also inside continued instructions), then continuations are joined.
    kept = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(kept) + "\n")
    args: dict[str, str] = {}
    stages: list[dict] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append({"from": image, "name": name, "instructions": []})
        elif keyword == "ARG" and not stages:
            key, _, default = rest.partition("=")
            args[key] = default
        elif stages:
            stages[-1]["instructions"].append((keyword, rest.strip()))
    return args, stages


def test_dockerfile_builds_tritium_and_runs_it_as_non_root():
    _, stages = dockerfile_stages()
    names = {stage["name"]: stage for stage in stages}
    builder, final = names["builder"], stages[-1]
    assert builder["from"] == "rust:1-bookworm"
    assert final["from"] == "debian:bookworm-slim"

    def last(stage: dict, keyword: str) -> str:
        values = [rest for kw, rest in stage["instructions"] if kw == keyword]
        assert values, f"no {keyword} in the final stage"
        return values[-1]

    user = last(final, "USER").split(":")[0]
    assert user.isdigit() and int(user) != 0, f"USER {user}: want a numeric non-root uid (runAsNonRoot checks it)"
    assert json.loads(last(final, "ENTRYPOINT")) == ["tritium"]
    assert json.loads(last(final, "CMD")) == ["serve"]
    exposed = {int(p.split("/")[0]) for kw, rest in final["instructions"] if kw == "EXPOSE" for p in rest.split()}
    assert {8000, 8001, 8002, 8011} <= exposed
    copies = [rest for kw, rest in final["instructions"] if kw == "COPY"]
    assert any(c.startswith("--from=builder ") and c.endswith(" /usr/local/bin/tritium") for c in copies), copies
    assert "ca-certificates" in " ".join(rest for kw, rest in final["instructions"] if kw == "RUN")
    # The pods run as the image's user.
    for name in ("tritium-frontend", "tritium-worker"):
        assert _pod(find("Deployment", name))["securityContext"]["runAsUser"] == int(user), name


def test_dockerfile_layers_dependencies_before_sources():
    _, stages = dockerfile_stages()
    builder = {stage["name"]: stage for stage in stages}["builder"]
    steps = builder["instructions"]
    build = "cargo build --release --locked -p tritium-server --bin tritium"
    builds = [i for i, (kw, rest) in enumerate(steps) if kw == "RUN" and build in " ".join(rest.split())]
    sources = [i for i, (kw, rest) in enumerate(steps) if kw == "COPY" and shlex.split(rest) == [".", "."]]
    skeleton = [i for i, (kw, rest) in enumerate(steps) if kw == "COPY" and rest.startswith("--from=skeleton ")]
    # Dependencies against the skeleton first, the full sources after; two builds in that order.
    assert len(builds) == 2 and len(sources) == 1 and len(skeleton) == 1, steps
    assert skeleton[0] < builds[0] < sources[0] < builds[1]
    # The binary the Dockerfile names exists under that name in that package.
    server_manifest = (REPO / "server" / "Cargo.toml").read_text()
    assert re.search(r'^name = "tritium-server"$', server_manifest, re.M)
    assert re.search(r'\[\[bin\]\]\s*name = "tritium"', server_manifest)


def test_dockerignore_excludes_build_outputs():
    ignore = DEPLOY / "Dockerfile.dockerignore"
    lines = [line.strip() for line in ignore.read_text().splitlines()]
    patterns = {line.rstrip("/") for line in lines if line and not line.startswith("#")}
    assert {"target", ".venv", ".tools"} <= patterns
