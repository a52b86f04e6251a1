"""``pytest-istio-mtls render``: every manifest of every built-in and sample scenario validates against
the Kubernetes schemas (kubernetes-validate, offline) and the Istio CRD schemas shipped in
tests/unit/data/istio-crds; the workload conventions the backends rely on are checked too."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from pytest_istio_mtls.backends.kube.manifests import (
    APP,
    CAPTURE,
    CURL,
    DEFAULT_IMAGES,
    ECHO_CONFIG,
    FRESH_CONNECTIONS,
    HTTP_OPTIONS,
    WORKLOAD_LABEL,
    ManifestError,
    images,
    install_overlay,
    port_name,
    stats_inclusion,
)
from pytest_istio_mtls.commands.cli import main
from pytest_istio_mtls.commands.render import render
from pytest_istio_mtls.judge.accesslog import FORMAT
from pytest_istio_mtls.model import MeshSettings, Port, Topology, Workload
from pytest_istio_mtls.scenario.loader import load_scenario

from ...paths import REPO, UNIT

DATA = UNIT / "data"
BUILTIN = REPO / "pytest_istio_mtls" / "scenarios"
SCENARIOS = sorted(BUILTIN.glob("*.yaml")) + sorted((DATA / "render").glob("*.yaml"))
KUBERNETES = "1.34"  # the oldest Kubernetes minor the pinned node images provide
SCHEMAS = {name: json.loads((DATA / "istio-crds" / f"{name.lower()}.json").read_text())
           for name in ("PeerAuthentication", "AuthorizationPolicy", "DestinationRule", "EnvoyFilter", "IstioOperator")}


def validate(obj: dict[str, Any]) -> None:
    kind = obj["kind"]
    if kind in SCHEMAS:
        jsonschema.validate(obj, SCHEMAS[kind], cls=jsonschema.Draft202012Validator)
    else:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def documents(scenario: Path, backend: str) -> list[dict[str, Any]]:
    return render(load_scenario(scenario), backend)


@pytest.mark.parametrize("backend", ["kind", "existing"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_every_manifest_validates(scenario: Path, backend: str) -> None:
    objects = documents(scenario, backend)
    assert objects
    for obj in objects:
        validate(obj)
    kinds = [o["kind"] for o in objects]
    assert (kinds[0] == "IstioOperator") is (backend == "kind")
    assert {"Namespace", "ServiceAccount", "Deployment", "Service"} <= set(kinds)


def test_the_schemas_can_fail() -> None:
    bad_mode = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                "metadata": {"name": "x", "namespace": "foo"}, "spec": {"mtls": {"mode": "STRICTLY"}}}
    no_selector = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                   "metadata": {"name": "x", "namespace": "foo"}, "spec": {"portLevelMtls": {"8080": {"mode": "DISABLE"}}}}
    no_host = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
               "metadata": {"name": "x", "namespace": "foo"}, "spec": {"trafficPolicy": {"tls": {"mode": "DISABLE"}}}}
    typo = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}},
                     "template": {"metadata": {"labels": {"a": "b"}},
                                  "spec": {"containers": [{"name": "c", "image": "i", "comand": ["x"]}]}}}}
    for obj in (bad_mode, no_selector, no_host):
        with pytest.raises(jsonschema.ValidationError):
            validate(obj)
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(typo)


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def test_workload_conventions() -> None:
    objects = documents(DATA / "render" / "authz-and-tcp.yaml", "kind")
    namespaces = {o["metadata"]["name"]: o["metadata"]["labels"] for o in by_kind(objects, "Namespace")}
    assert namespaces["foo"]["istio-injection"] == "enabled"
    assert "istio-injection" not in namespaces["legacy"]  # it holds a sidecar workload: opt in per pod
    deployments = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in by_kind(objects, "Deployment")}
    httpbin = deployments[("foo", "httpbin")]["spec"]["template"]
    names = [c["name"] for c in httpbin["spec"]["containers"]]
    assert names == [APP, CURL, CAPTURE]  # capture never first
    assert httpbin["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == APP
    app = httpbin["spec"]["containers"][0]
    # the project's echo app, the program every backend runs, serves every port of the workload
    assert app["args"] == ["/opt/pytest-istio-mtls/echo.py", "--http=8080", "--http=9080", "--tcp=9000",
                           "--name=httpbin.foo"]
    assert app["volumeMounts"][0]["mountPath"] == "/opt/pytest-istio-mtls"
    assert httpbin["spec"]["volumes"] == [{"name": "echo", "configMap": {"name": ECHO_CONFIG}}]
    echo = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in by_kind(objects, "ConfigMap")}
    assert echo[("foo", ECHO_CONFIG)]["data"]["echo.py"] == (REPO / "pytest_istio_mtls/backends/echo.py").read_text()
    assert all(name == ECHO_CONFIG for _, name in echo)
    capture = httpbin["spec"]["containers"][-1]["securityContext"]["capabilities"]["add"]
    assert capture == ["NET_ADMIN", "NET_RAW"]
    assert httpbin["metadata"]["labels"]["version"] == "v1" and httpbin["metadata"]["labels"][WORKLOAD_LABEL] == "httpbin"
    proxy = json.loads(httpbin["metadata"]["annotations"]["proxy.istio.io/config"])
    assert any("15006" in r for r in proxy["proxyStatsMatcher"]["inclusionRegexps"])
    bare = deployments[("bar", "bare")]["spec"]["template"]["metadata"]
    assert bare["labels"]["sidecar.istio.io/inject"] == bare["annotations"]["sidecar.istio.io/inject"] == "false"
    meshed = deployments[("legacy", "meshed")]["spec"]["template"]["metadata"]
    assert meshed["labels"]["sidecar.istio.io/inject"] == "true"
    services = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in by_kind(objects, "Service")}
    ports = services[("foo", "httpbin")]["spec"]["ports"]
    assert [(p["name"], p["port"], p["targetPort"], p["appProtocol"]) for p in ports] == [
        ("http", 8000, 8080, "http"), ("http-admin", 8001, 9080, "http"), ("tcp-echo", 9000, 9000, "tcp")]
    assert services[("foo", "httpbin")]["spec"]["selector"] == {WORKLOAD_LABEL: "httpbin"}


def test_fresh_connection_filters_cover_every_http_service_port() -> None:
    objects = documents(DATA / "render" / "authz-and-tcp.yaml", "kind")
    filters = by_kind(objects, "EnvoyFilter")
    assert sorted(f["metadata"]["namespace"] for f in filters) == ["bar", "foo", "legacy"]  # namespaces with sidecars
    patches = filters[0]["spec"]["configPatches"]
    targets = sorted((p["match"]["cluster"]["service"], p["match"]["cluster"]["portNumber"]) for p in patches)
    assert targets == [("httpbin.foo.svc.cluster.local", 8000), ("httpbin.foo.svc.cluster.local", 8001),
                       ("meshed.legacy.svc.cluster.local", 80)]  # tcp 9000 is not patched
    options = patches[0]["patch"]["value"]["typed_extension_protocol_options"][HTTP_OPTIONS]
    assert options["common_http_protocol_options"] == {"max_requests_per_connection": 1}
    assert "explicit_http_config" in options  # a complete HttpProtocolOptions: Istio replaces the whole entry
    assert all(f["metadata"]["name"] == FRESH_CONNECTIONS for f in filters)


def test_install_overlay_carries_the_evidence_settings() -> None:
    overlay = documents(BUILTIN / "10-automtls-off.yaml", "kind")[0]
    mesh = overlay["spec"]["meshConfig"]
    assert overlay["spec"]["profile"] == "minimal"
    assert mesh["enableAutoMtls"] is False  # the scenario's setting
    assert mesh["accessLogEncoding"] == "JSON" and json.loads(mesh["accessLogFormat"]) == FORMAT
    assert overlay["spec"]["components"]["pilot"]["k8s"]["resources"]["requests"]["memory"] == "256Mi"


def test_install_overlay_pins_the_hub_and_uses_no_deprecated_values() -> None:
    overlay = documents(BUILTIN / "02-mesh-strict.yaml", "kind")[0]
    # istioctl 1.30 compiles in the GCP registry.istio.io, which Istio is retiring: the overlay must win.
    assert overlay["spec"]["hub"] == "docker.io/istio"
    assert install_overlay(MeshSettings(), hub="mirror.example.com/istio")["spec"]["hub"] == "mirror.example.com/istio"
    values = overlay["spec"]["values"]
    assert "resources" not in values["pilot"] and "proxy" not in values.get("global", {})
    sidecars = [d for d in documents(BUILTIN / "02-mesh-strict.yaml", "kind") if d["kind"] == "Deployment"
                and d["spec"]["template"]["metadata"]["labels"].get("sidecar.istio.io/inject") != "false"]
    assert sidecars and all(d["spec"]["template"]["metadata"]["annotations"]["sidecar.istio.io/proxyCPU"] == "10m"
                            for d in sidecars)


def test_existing_renders_per_run_names_everywhere() -> None:
    objects = documents(DATA / "render" / "authz-and-tcp.yaml", "existing")
    namespaces = {o["metadata"]["name"] for o in by_kind(objects, "Namespace")}
    assert namespaces == {"foo-000000", "bar-000000", "legacy-000000"}
    ap = by_kind(objects, "AuthorizationPolicy")[0]
    source = ap["spec"]["rules"][0]["from"][0]["source"]
    assert source == {"principals": ["cluster.local/ns/bar-000000/sa/client"], "namespaces": ["bar-000000"]}
    dr = by_kind(objects, "DestinationRule")[0]
    assert dr["spec"]["host"] == "httpbin.foo-000000.svc.cluster.local" and dr["spec"]["exportTo"] == [".", "foo-000000"]
    pa = by_kind(objects, "PeerAuthentication")[0]
    assert pa["metadata"] == {"name": "default-000000", "namespace": "istio-system", "labels": {
        "app.kubernetes.io/managed-by": "pytest-istio-mtls", "istio-mtls.pytest.io/run": "000000"}}
    deployment = by_kind(objects, "Deployment")[0]["spec"]["template"]["metadata"]["annotations"]
    regexps = json.loads(deployment["proxy.istio.io/config"])["proxyStatsMatcher"]["inclusionRegexps"]
    assert any("foo-000000" in r for r in regexps)  # outbound stats limited to the run's namespaces


def test_revision_labels() -> None:
    objects = render(load_scenario(DATA / "render" / "authz-and-tcp.yaml"), "kind", revision="1-31-1")
    assert objects[0]["spec"]["revision"] == "1-31-1"
    foo = next(o for o in by_kind(objects, "Namespace") if o["metadata"]["name"] == "foo")
    assert foo["metadata"]["labels"]["istio.io/rev"] == "1-31-1"
    meshed = next(o for o in by_kind(objects, "Deployment") if o["metadata"]["name"] == "meshed")
    assert meshed["spec"]["template"]["metadata"]["labels"]["istio.io/rev"] == "1-31-1"


def test_images_are_overridable() -> None:
    assert images({"curl": "mirror.local/curl:8.16.0"})["curl"] == "mirror.local/curl:8.16.0"
    assert images()["app"] == DEFAULT_IMAGES["app"] == "docker.io/library/python:3.13-slim"
    objects = render(load_scenario(BUILTIN / "01-no-policy.yaml"), "kind",
                     image_overrides={"app": "mirror.local/python:3.13-slim"})
    used = {c["image"] for d in by_kind(objects, "Deployment") for c in d["spec"]["template"]["spec"]["containers"]}
    assert "mirror.local/python:3.13-slim" in used and DEFAULT_IMAGES["app"] not in used


def test_one_container_port_cannot_be_http_and_tcp() -> None:
    from pytest_istio_mtls.backends.kube.manifests import render_topology
    from pytest_istio_mtls.backends.kube.naming import Naming

    clash = Workload("x", "foo", {"app": "x"}, "x", True, (Port("http", 80, 8080), Port("tcp", 81, 8080, "tcp")))
    from pytest_istio_mtls.model import Namespace

    with pytest.raises(ManifestError, match="container port 8080 is used by both"):
        render_topology(Topology((Namespace("foo", True),), (clash,)), Naming(None), images())


@pytest.mark.parametrize(("name", "protocol", "expected"), [("http", "http", "http"), ("http-web", "http", "http-web"),
                                                            ("web", "http", "http-web"), ("echo", "tcp", "tcp-echo"),
                                                            ("tcp", "tcp", "tcp")])
def test_port_names_announce_the_protocol(name: str, protocol: str, expected: str) -> None:
    assert port_name(Port(name, 80, 80, protocol)) == expected  # type: ignore[arg-type]


def test_cli_prints_a_yaml_stream(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", str(DATA / "render" / "authz-and-tcp.yaml"), "--backend", "existing"]) == 0
    out, err = capsys.readouterr()
    stream = [d for d in yaml.safe_load_all(out) if d]
    assert [d["kind"] for d in stream][:3] == ["Namespace", "Namespace", "Namespace"]
    assert "refuses PeerAuthentication istio-system/default unless --istio-allow-mesh-wide" in err


def test_cli_reports_bad_scenarios(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nexpect: []\n")
    assert main(["render", str(bad)]) == 1
    assert "expect is empty" in capsys.readouterr().err


def test_render_touches_no_cluster_and_loads_no_client() -> None:
    code = ("import sys; from pytest_istio_mtls.commands.cli import main; "
            f"rc = main(['render', {str(BUILTIN / '02-mesh-strict.yaml')!r}]); "
            "assert 'kubernetes' not in sys.modules and 'httpx' not in sys.modules, sorted(sys.modules); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "kind: IstioOperator" in done.stdout


@pytest.mark.parametrize("name", [
    # Istio >= 1.24: clusters are named by alt_stat_name "<cluster>;" (istio/istio#52234)
    "cluster.outbound|8000||httpbin.foo-abc123.svc.cluster.local;.ssl.connection_error",
    "cluster.outbound|8000||httpbin.foo-abc123.svc.cluster.local;.upstream_cx_destroy_remote_with_active_rq",
    "cluster.outbound|9000|v1|tcp-echo.bar-abc123.svc.example.corp;.ssl.handshake",  # any cluster domain
    # Istio < 1.24
    "cluster.outbound|8000||httpbin.foo-abc123.svc.cluster.local.ssl.connection_error",
])
def test_scoped_stats_keep_outbound_clusters_of_the_runs_namespaces(name: str) -> None:
    scoped = stats_inclusion(["foo-abc123", "bar-abc123"])
    assert any(re.fullmatch(pattern, name) for pattern in scoped)
    other = name.replace("foo-abc123", "team-x").replace("bar-abc123", "team-x")
    assert not any(re.fullmatch(pattern, other) for pattern in scoped)  # other tenants' clusters stay out


def test_stats_inclusion_keeps_every_server_stat_the_verdicts_read() -> None:
    """stats_server_httpbin.txt is recorded from a real sidecar (istiod 1.31-eed52ebb66ad, pilot-agent, Envoy
    1.40.0) of the local backend, after mTLS, plaintext, a STRICT refusal and an AuthorizationPolicy."""
    recorded = [line.partition(": ")[0] for line in (DATA.parent / "replays" / "stats_server_httpbin.txt").read_text()
                .splitlines() if line.strip()]
    for names in (None, ["foo-abc123"]):
        patterns = stats_inclusion(names)
        kept = [n for n in recorded if any(re.fullmatch(p, n) for p in patterns)]
        assert kept == recorded, set(recorded) - set(kept)
