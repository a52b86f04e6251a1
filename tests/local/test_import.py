"""`pytest-istio-mtls import` against the real kube-apiserver of the local istiod control plane: real objects
are written through the project's client, imported, validated, and compared with what was written."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from pytest_istio_mtls.backends.kube.client import Kube
from pytest_istio_mtls.backends.local import LocalBackend
from pytest_istio_mtls.commands.cli import main
from pytest_istio_mtls.scenario.loader import load_scenario

from .conftest import CONTROL_PLANE

pytestmark = pytest.mark.skipif(CONTROL_PLANE != "istiod", reason="the emulated control plane has no API server")

IMAGE = "example.invalid/app:1"
SCHEMA = json.loads((Path(__file__).parents[2] / "pytest_istio_mtls/scenario.schema.json").read_text())


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def workload(kind: str, ns: str, name: str, labels: dict[str, str], account: str = "",
             annotations: dict[str, str] | None = None, ports: dict[str, int] | None = None) -> dict[str, Any]:
    """A Deployment, StatefulSet or DaemonSet selecting its pods by their `app` label."""
    container: dict[str, Any] = {"name": "app", "image": IMAGE}
    if ports:
        container["ports"] = [{"name": n, "containerPort": p} for n, p in ports.items()]
    pod: dict[str, Any] = {"containers": [container]}
    if account:
        pod["serviceAccountName"] = account
    spec: dict[str, Any] = {"selector": {"matchLabels": {"app": labels["app"]}},
                            "template": {"metadata": {"labels": labels, "annotations": annotations or {}},
                                         "spec": pod}}
    if kind != "DaemonSet":
        spec["replicas"] = 0
    if kind == "StatefulSet":
        spec["serviceName"] = name
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name, "namespace": ns}, "spec": spec}


def service(ns: str, name: str, selector: dict[str, str] | None, ports: list[dict[str, Any]],
            **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {**({"selector": selector} if selector else {}), "ports": ports, **spec}}


def istio(kind: str, ns: str, name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None
          ) -> dict[str, Any]:
    group = "security.istio.io" if kind in ("PeerAuthentication", "AuthorizationPolicy") else "networking.istio.io"
    metadata: dict[str, Any] = {"name": name, "namespace": ns, **({"annotations": annotations} if annotations else {})}
    return {"apiVersion": f"{group}/v1", "kind": kind, "metadata": metadata, "spec": spec}


PA_MESH = istio("PeerAuthentication", "imp-root", "default", {"mtls": {"mode": "PERMISSIVE"}})
PA_SHOP = istio("PeerAuthentication", "imp-shop", "default", {"mtls": {"mode": "STRICT"}})
AP_HTTPBIN = istio("AuthorizationPolicy", "imp-shop", "httpbin-allow", {
    "selector": {"matchLabels": {"app": "httpbin"}}, "action": "ALLOW",
    "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/imp-shop/sa/node-agent"]}}]}]},
    annotations={"istio.io/dry-run": "true", "example.com/owner": "team-a"})
DR_WEB = istio("DestinationRule", "imp-legacy", "web", {"host": "web.imp-legacy.svc.cluster.local",
                                                       "trafficPolicy": {"tls": {"mode": "DISABLE"}}})
# The mesh config where Istio keeps it (the local istiod reads its file, so this changes nothing there).
MESH_CONFIG = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "istio", "namespace": "istio-system"},
               "data": {"mesh": "enableAutoMtls: false\nrootNamespace: imp-root\n"}}
OBJECTS: list[dict[str, Any]] = [
    namespace("imp-root"), namespace("imp-shop", **{"istio-injection": "enabled"}), namespace("imp-legacy"),
    namespace("imp-canary", **{"istio.io/rev": "canary"}), namespace("imp-other", **{"istio-injection": "enabled"}),
    namespace("imp-ambient", **{"istio.io/dataplane-mode": "ambient"}),
    workload("Deployment", "imp-shop", "httpbin", {"app": "httpbin", "version": "v1"}, "httpbin",
             ports={"http-web": 8080}),
    service("imp-shop", "httpbin", {"app": "httpbin"}, [
        {"name": "http", "port": 8000, "targetPort": "http-web"},
        {"name": "metrics", "port": 9090, "appProtocol": "tcp"},
        {"name": "dns", "port": 5353, "protocol": "UDP"}]),
    workload("StatefulSet", "imp-shop", "db", {"app": "db"}, "db"),
    service("imp-shop", "db", {"app": "db"}, [{"name": "redis", "port": 6379}, {"name": "postgres", "port": 5432}]),
    workload("Deployment", "imp-shop", "curl", {"app": "curl", "sidecar.istio.io/inject": "false"}, "curl"),
    workload("DaemonSet", "imp-shop", "node-agent", {"app": "node-agent"}),
    workload("Deployment", "imp-shop", "reviews-v1", {"app": "reviews", "version": "v1"}, "reviews"),
    workload("Deployment", "imp-shop", "reviews-v2", {"app": "reviews", "version": "v2"}, "reviews",
             annotations={"sidecar.istio.io/inject": "false"}),
    service("imp-shop", "reviews", {"app": "reviews"}, [{"name": "http", "port": 9080}]),
    service("imp-shop", "reviews-canary", {"app": "reviews", "version": "v2"}, [{"name": "http", "port": 9080}]),
    service("imp-shop", "payments", None, [{"port": 443}], type="ExternalName", externalName="pay.example.com"),
    service("imp-shop", "orphan", {"app": "nothing"}, [{"name": "http", "port": 80}]),
    workload("Deployment", "imp-legacy", "legacy-web", {"app": "web"}, "web"),
    service("imp-legacy", "web", {"app": "web"}, [{"name": "http", "port": 80, "targetPort": 8080}]),
    workload("Deployment", "imp-legacy", "legacy-client", {"app": "legacy-client"}, "legacy-client"),
    workload("Deployment", "imp-legacy", "opted-in", {"app": "opted-in", "sidecar.istio.io/inject": "true"},
             "opted-in"),
    workload("Deployment", "imp-canary", "canary-app", {"app": "canary-app"}, "canary-app"),
    workload("Deployment", "imp-canary", "canary-client", {"app": "canary-client"}, "canary-client"),
    service("imp-canary", "canary-app", {"app": "canary-app"}, [{"name": "http", "port": 8080}]),
    workload("Deployment", "imp-ambient", "ztunnel-client", {"app": "ztunnel-client"}),
    workload("Deployment", "imp-ambient", "echo", {"app": "echo"}),
    service("imp-ambient", "echo", {"app": "echo"}, [{"name": "http", "port": 8080}]),
    PA_MESH, PA_SHOP, AP_HTTPBIN, DR_WEB,
    istio("VirtualService", "imp-shop", "httpbin", {"hosts": ["httpbin"], "http": [{"route": [
        {"destination": {"host": "httpbin"}}]}]}),
    istio("PeerAuthentication", "imp-other", "default", {"mtls": {"mode": "DISABLE"}}),
    # A pod of legacy-web that was injected when it started (its namespace is not labelled now).
    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web", "namespace": "imp-legacy"}},
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "legacy-web-0", "namespace": "imp-legacy",
                                                     "labels": {"app": "web"}},
     "spec": {"serviceAccountName": "web", "automountServiceAccountToken": False,
              "containers": [{"name": "app", "image": IMAGE}, {"name": "istio-proxy", "image": IMAGE}]}},
]


@pytest.fixture(scope="module")
def cluster(local_backend: LocalBackend) -> Iterator[tuple[Kube, Path]]:
    """The objects above in the run's API server, removed again after the module (namespaces stay Terminating:
    there is no namespace controller, so they are created once)."""
    assert local_backend.istiod is not None
    kube, kubeconfig = local_backend.istiod.kube, local_backend.istiod.control.kubeconfig_path
    assert kube is not None and kubeconfig is not None
    try:
        for obj in OBJECTS:
            kube.apply(obj)
        kube.patch_pod_status("imp-legacy", "legacy-web-0", {"phase": "Running"})
        yield kube, kubeconfig
    finally:
        for obj in reversed(OBJECTS):
            meta = obj["metadata"]
            kube.delete(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"], grace_period_seconds=0)


@pytest.fixture
def mesh_config(cluster: tuple[Kube, Path]) -> Iterator[Path]:
    """The cluster's mesh config turns autoMtls off and makes imp-root the root namespace, for one test."""
    kube, kubeconfig = cluster
    kube.apply(MESH_CONFIG)
    try:
        yield kubeconfig
    finally:
        kube.delete("v1", "ConfigMap", "istio-system", "istio")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_import_reads_what_was_created(mesh_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kubeconfig = mesh_config
    out = tmp_path / "shop.yaml"
    code, stdout, stderr = run(capsys, "import", "--kubeconfig", str(kubeconfig), "--namespaces",
                               "imp-shop,imp-legacy,imp-canary", "-o", str(out))
    assert (code, stdout) == (0, ""), stderr
    assert stderr.splitlines() == [
        "note: Deployment imp-legacy/legacy-web: its running pods have a sidecar, which the injection labels would "
        "not give them now (restarted since?): imported as they run",
        "note: Service imp-shop/db port 5432 declares no protocol (no appProtocol, no known name prefix): Istio "
        "sniffs it; imported as http",
        "note: Service imp-shop/httpbin port 5353 is UDP: Istio does not proxy it, not imported",
        "note: Service imp-shop/orphan selects no Deployment, StatefulSet or DaemonSet: not imported",
        "note: Service imp-shop/payments has no selector (ExternalName or hand-written endpoints): not imported",
        "note: Deployment imp-shop/reviews-v2 is behind Service imp-shop/reviews-canary and Service imp-shop/reviews: "
        "its pods are imported for each",
        "note: VirtualService imp-shop/httpbin: routing is not modelled, not imported",
        f"{out} written: 3 namespaces, 12 workloads, 4 policies; check it with `pytest-istio-mtls predict {out}`",
    ]
    text = out.read_text()
    assert text.splitlines()[:2] == [
        f"# yaml-language-server: $schema={SCHEMA['$id']}",
        "# Imported by `pytest-istio-mtls import` from context local, namespaces imp-shop, imp-legacy, imp-canary.",
    ]
    jsonschema.validate(yaml.safe_load(text), SCHEMA)
    assert run(capsys, "validate", str(out))[0] == 0

    scenario = load_scenario(out)
    assert (scenario.name, scenario.derived) == ("shop", True)
    assert (scenario.mesh.auto_mtls, scenario.mesh.root_namespace) == (False, "imp-root")
    assert {n.name: (n.sidecars, n.ambient) for n in scenario.topology.namespaces} == {
        "imp-shop": (True, False), "imp-legacy": (False, False), "imp-canary": (True, False)}
    assert {w.ref: (dict(w.labels), w.service_account, w.sidecar,
                    [(p.name, p.port, p.target_port, p.protocol) for p in w.ports])
            for w in scenario.topology.workloads} == {
        "httpbin.imp-shop": ({"app": "httpbin", "version": "v1"}, "httpbin", True,
                             [("http", 8000, 8080, "http"), ("metrics", 9090, 9090, "tcp")]),
        "db.imp-shop": ({"app": "db"}, "db", True, [("redis", 6379, 6379, "tcp"), ("postgres", 5432, 5432, "http")]),
        "reviews.imp-shop": ({"app": "reviews", "version": "v1"}, "reviews", True, [("http", 9080, 9080, "http")]),
        "reviews-canary.imp-shop": ({"app": "reviews", "version": "v2"}, "reviews", False,
                                    [("http", 9080, 9080, "http")]),
        # Behind Service reviews too (it serves that Service's ports); its pods are not injected.
        "reviews-v2.imp-shop": ({"app": "reviews", "version": "v2"}, "reviews", False, [("http", 9080, 9080, "http")]),
        "curl.imp-shop": ({"app": "curl", "sidecar.istio.io/inject": "false"}, "curl", False, []),
        "node-agent.imp-shop": ({"app": "node-agent"}, "default", True, []),
        "web.imp-legacy": ({"app": "web"}, "web", True, [("http", 80, 8080, "http")]),
        "legacy-client.imp-legacy": ({"app": "legacy-client"}, "legacy-client", False, []),
        "opted-in.imp-legacy": ({"app": "opted-in", "sidecar.istio.io/inject": "true"}, "opted-in", True, []),
        "canary-app.imp-canary": ({"app": "canary-app"}, "canary-app", True, [("http", 8080, 8080, "http")]),
        "canary-client.imp-canary": ({"app": "canary-client"}, "canary-client", True, []),
    }
    # The policies in force (the root namespace's too, not imp-other's), as written, in Istio's order per kind.
    assert [p.ref for p in scenario.policies] == ["PeerAuthentication imp-root/default",
                                                  "PeerAuthentication imp-shop/default",
                                                  "AuthorizationPolicy imp-shop/httpbin-allow",
                                                  "DestinationRule imp-legacy/web"]
    written = {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): o
               for o in (PA_MESH, PA_SHOP, AP_HTTPBIN, DR_WEB)}
    for policy in scenario.policies:
        assert policy.manifest["spec"] == written[(policy.kind, policy.namespace, policy.name)]["spec"]
    assert scenario.policies[2].manifest["metadata"]["annotations"] == {"istio.io/dry-run": "true"}


def test_import_to_standard_output_is_the_same_scenario(mesh_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without -o the scenario goes to stdout and the notes to stderr; a second import reads the same."""
    kubeconfig = mesh_config
    args = ["import", "--kubeconfig", str(kubeconfig), "--context", "local", "--namespaces", "imp-canary"]
    code, first, stderr = run(capsys, *args)
    assert code == 0, stderr
    assert stderr == "scenario written: 1 namespace, 2 workloads, 1 policy; check it with " \
                     "`pytest-istio-mtls predict FILE`\n"
    assert run(capsys, *args)[1] == first
    assert first.splitlines()[3:] == [
        "name: imported",
        "description: Imported from context local, namespaces imp-canary",
        "mesh: {autoMtls: false, rootNamespace: imp-root}",
        "topology:",
        "  namespaces:",
        "    imp-canary: {sidecars: true}",
        "  workloads:",
        "    - {name: canary-app, namespace: imp-canary, ports: [{name: http, port: 8080}]}",
        "    - {name: canary-client, namespace: imp-canary}",
        "policies: |",
        "  apiVersion: security.istio.io/v1",
        "  kind: PeerAuthentication",
        "  metadata:",
        "    name: default",
        "    namespace: imp-root",
        "  spec:",
        "    mtls:",
        "      mode: PERMISSIVE",
        "expect: derived",
    ]


def test_what_the_oracle_cannot_predict_is_written_and_refused(mesh_config: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """An ambient namespace is imported as it is, but `expect: derived` needs predictions: exit 1, the
    loader's message, and the file is there to edit."""
    kubeconfig = mesh_config
    out = tmp_path / "ambient.yaml"
    code, _, stderr = run(capsys, "import", "--kubeconfig", str(kubeconfig), "--namespaces", "imp-ambient",
                          "-o", str(out))
    assert code == 1
    lines = stderr.splitlines()
    assert lines[0] == "error: the imported scenario (1 namespace, 2 workloads, 1 policy) does not validate:"
    assert lines[1].startswith(f"{out}:")
    assert "error: expect: derived, but the oracle cannot predict ztunnel-client.imp-ambient->echo.imp-ambient:8080 " \
           "(ztunnel-client.imp-ambient is in ambient mode, which the oracle does not predict)" in lines[1]
    assert yaml.safe_load(out.read_text())["topology"]["namespaces"] == {
        "imp-ambient": {"sidecars": False, "ambient": True}}


def test_a_missing_namespace_names_the_ones_there(cluster: tuple[Kube, Path], capsys: pytest.CaptureFixture[str]
                                                  ) -> None:
    _, kubeconfig = cluster
    code, out, err = run(capsys, "import", "--kubeconfig", str(kubeconfig), "--namespaces", "imp-shop,imp-shoop")
    assert (code, out) == (1, "")
    first, fix = err.splitlines()
    assert first == "error: namespace 'imp-shoop' does not exist in context local; did you mean 'imp-shop'?"
    assert fix.startswith("    fix: namespaces there: ") and "imp-legacy" in fix


def test_an_imported_scenario_runs_on_the_local_backend(cluster: tuple[Kube, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        pytester: pytest.Pytester) -> None:
    """Import (no mesh config: Istio's defaults), then run it: real istiod confirms every derived row."""
    _, kubeconfig = cluster
    out = pytester.path / "imported.yaml"
    code, _, stderr = run(capsys, "import", "--kubeconfig", str(kubeconfig), "--namespaces", "imp-legacy,imp-canary",
                          "-o", str(out))
    assert code == 0, stderr
    assert "note: no mesh config in ConfigMap istio-system/istio or istio-system/istio-canary: Istio's defaults " \
           "assumed (autoMtls on, root namespace istio-system)" in stderr.splitlines()
    rows = len(load_scenario(out).expectations)
    result = pytester.runpytest_subprocess("--istio-scenarios", "imported.yaml", "--istio-backend=local",
                                           "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines([f"{rows} correct, 0 wrong, 0 errors"])  # on failure pytest prints the run
    result.assert_outcomes(passed=rows)
