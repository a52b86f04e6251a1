"""`pytest-istio-mtls import` against a real kind cluster with real Istio and its injection webhook.

A user's mesh is written as a user writes it (kubectl-style YAML: namespaces, Deployments, a Service, a
PeerAuthentication pair and an AuthorizationPolicy), brought up until its pods are Ready and the webhook has
injected the sidecars, imported, checked against what was written, validated, and then run with the plugin on
the local backend (real istiod) and on kind: every derived row must pass on both. The test's namespaces (random
names) are deleted at the end and checked gone.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import pytest
import yaml

from pytest_istio_mtls.backends.kube.client import Kube
from pytest_istio_mtls.backends.kube.manifests import DEFAULT_IMAGES
from pytest_istio_mtls.scenario.loader import load_scenario

from .conftest import CLUSTER, SessionCluster

READY_TIMEOUT = 300.0  # pods Ready with their sidecars: image loads are done, the webhook and istiod are up
GONE_TIMEOUT = 180.0  # a namespace terminates: its pods' grace periods, then the namespace controller
SIDECAR = "istio-proxy"

# What a user would kubectl-apply: an injected namespace with a server behind a Service and a client, a namespace
# without injection with a plaintext client; STRICT for the namespace but PERMISSIVE on the server's port 8080
# (a second, workload-selected PeerAuthentication), so the plaintext client gets through mTLS and is denied by
# the AuthorizationPolicy, which lets only the injected client's service account GET.
MANIFESTS = Template("""\
apiVersion: v1
kind: Namespace
metadata:
  name: $mesh
  labels:
    istio-injection: enabled
---
apiVersion: v1
kind: Namespace
metadata:
  name: $legacy
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: httpbin
  namespace: $mesh
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: curl
  namespace: $mesh
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: httpbin
  namespace: $mesh
spec:
  replicas: 1
  selector:
    matchLabels:
      app: httpbin
  template:
    metadata:
      labels:
        app: httpbin
        version: v1
      annotations:
        sidecar.istio.io/proxyCPU: 10m
        sidecar.istio.io/proxyMemory: 40Mi
    spec:
      serviceAccountName: httpbin
      terminationGracePeriodSeconds: 2
      containers:
      - name: httpbin
        image: $app_image
        imagePullPolicy: IfNotPresent
        command: ["python3", "-m", "http.server", "8080"]
        ports:
        - name: http
          containerPort: 8080
        readinessProbe:
          httpGet:
            path: /
            port: 8080
          periodSeconds: 2
---
apiVersion: v1
kind: Service
metadata:
  name: httpbin
  namespace: $mesh
  labels:
    app: httpbin
spec:
  selector:
    app: httpbin
  ports:
  - name: http
    port: 8000
    targetPort: http
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: curl
  namespace: $mesh
spec:
  replicas: 1
  selector:
    matchLabels:
      app: curl
  template:
    metadata:
      labels:
        app: curl
      annotations:
        sidecar.istio.io/proxyCPU: 10m
        sidecar.istio.io/proxyMemory: 40Mi
    spec:
      serviceAccountName: curl
      terminationGracePeriodSeconds: 2
      containers:
      - name: curl
        image: $curl_image
        imagePullPolicy: IfNotPresent
        command: ["/bin/sleep", "infinity"]
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: curl
  namespace: $legacy
spec:
  replicas: 1
  selector:
    matchLabels:
      app: curl
  template:
    metadata:
      labels:
        app: curl
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: curl
        image: $curl_image
        imagePullPolicy: IfNotPresent
        command: ["/bin/sleep", "infinity"]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: $mesh
spec:
  mtls:
    mode: STRICT
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: httpbin
  namespace: $mesh
spec:
  selector:
    matchLabels:
      app: httpbin
  mtls:
    mode: STRICT
  portLevelMtls:
    8080:
      mode: PERMISSIVE
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin-get
  namespace: $mesh
spec:
  selector:
    matchLabels:
      app: httpbin
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/$mesh/sa/curl"]
    to:
    - operation:
        methods: ["GET"]
""")


def workload_images() -> dict[str, str]:
    """The images the environment names (`.ci/kind-env exec` sets ISTIO_MTLS_IMAGES), else the plugin's."""
    found = dict(DEFAULT_IMAGES)
    for item in os.environ.get("ISTIO_MTLS_IMAGES", "").split(","):
        key, _, image = item.partition("=")
        if key.strip() and image.strip():
            found[key.strip()] = image.strip()
    return found


def kubectl() -> str | None:
    """The kubectl beside the kind binary the environment names (the offline build's), else one on PATH."""
    kind = os.environ.get("ISTIO_MTLS_KIND_BIN")
    if kind and (Path(kind).parent / "kubectl").is_file():
        return str(Path(kind).parent / "kubectl")
    return shutil.which("kubectl")


def cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """`pytest-istio-mtls ARGS` as a user runs it: the venv's console script."""
    script = Path(sys.executable).parent / "pytest-istio-mtls"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "pytest_istio_mtls"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout, check=False)


def as_applied(value: Any) -> Any:
    """What the API server keeps of a written object: JSON (portLevelMtls's 8080 key becomes "8080")."""
    return json.loads(json.dumps(value, default=str))


@dataclass
class Source:
    """The user's mesh in the session cluster: two namespaces of the test's own."""

    kube: Kube
    kubeconfig: Path
    mesh: str
    legacy: str
    text: str = ""

    @property
    def namespaces(self) -> tuple[str, str]:
        return self.mesh, self.legacy

    def create(self) -> None:
        images = workload_images()
        self.text = MANIFESTS.substitute(mesh=self.mesh, legacy=self.legacy, app_image=images["app"],
                                         curl_image=images["curl"])
        binary = kubectl()
        if binary:
            done = subprocess.run([binary, "--kubeconfig", str(self.kubeconfig), "apply", "-f", "-"],
                                  input=self.text, capture_output=True, text=True, timeout=120, check=False)
            assert done.returncode == 0, f"kubectl apply: {done.stderr}"
        else:
            for obj in yaml.safe_load_all(self.text):
                self.kube.apply(obj)

    def written(self, kind: str) -> dict[str, dict[str, Any]]:
        return {str(o["metadata"]["name"]): o for o in yaml.safe_load_all(self.text) if o["kind"] == kind}

    def unready(self) -> list[str]:
        """What keeps the Deployments' pods from being Ready with the right sidecar presence ([] when none)."""
        problems = []
        for namespace, name, sidecar in ((self.mesh, "httpbin", True), (self.mesh, "curl", True),
                                         (self.legacy, "curl", False)):
            pods = [p for p in self.kube.list("v1", "Pod", namespace, f"app={name}")
                    if not p["metadata"].get("deletionTimestamp")]
            if not pods:
                problems.append(f"{name}.{namespace}: no pod yet")
            for pod in pods:
                status = pod.get("status") or {}
                ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                            for c in status.get("conditions") or [])
                containers = [c["name"] for c in [*(pod["spec"].get("initContainers") or []),
                                                  *(pod["spec"].get("containers") or [])]]
                waiting = [f"{c['name']}: {c['state']['waiting'].get('reason')}"
                           for c in [*(status.get("initContainerStatuses") or []),
                                     *(status.get("containerStatuses") or [])]
                           if (c.get("state") or {}).get("waiting")]
                where = f"{name}.{namespace} pod {pod['metadata']['name']}"
                if (SIDECAR in containers) != sidecar:
                    problems.append(f"{where}: {'no' if sidecar else 'an'} {SIDECAR} container ({containers})")
                if not ready:
                    problems.append(f"{where}: not Ready (phase {status.get('phase')}; {', '.join(waiting) or '-'})")
        return problems

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> float:
        start = time.monotonic()
        while problems := self.unready():
            assert time.monotonic() - start < timeout, (
                f"the source mesh is not ready after {timeout:.0f} s:\n  " + "\n  ".join(problems))
            time.sleep(2)
        return time.monotonic() - start

    def present(self) -> list[str]:
        """The test's namespaces still in the cluster, Terminating included."""
        found = []
        for namespace in self.namespaces:
            obj = self.kube.get("v1", "Namespace", None, namespace)
            if obj is not None:
                found.append(f"Namespace {namespace} ({(obj.get('status') or {}).get('phase')})")
        return found

    def delete(self, timeout: float = GONE_TIMEOUT) -> list[str]:
        """Delete exactly the test's namespaces and wait until they are gone; what is still there."""
        for namespace in self.namespaces:
            self.kube.delete("v1", "Namespace", None, namespace)
        deadline = time.monotonic() + timeout
        while (left := self.present()) and time.monotonic() < deadline:
            time.sleep(2)
        return left


@pytest.fixture(scope="module")
def source(kind_cluster: SessionCluster) -> Iterator[Source]:
    suffix = secrets.token_hex(3)
    mesh = Source(kind_cluster.kube, kind_cluster.kubeconfig, f"imp-mesh-{suffix}", f"imp-legacy-{suffix}")
    try:
        mesh.create()
        waited = mesh.wait_ready()
        print(f"[tests/kind] source mesh ready in {waited:.0f} s: {', '.join(mesh.namespaces)}")
        yield mesh
    finally:
        left = mesh.delete()
        assert not left, f"still there {GONE_TIMEOUT:.0f} s after deleting them: {left}"


@dataclass
class Imported:
    path: Path
    done: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def imported(source: Source, tmp_path_factory: pytest.TempPathFactory) -> Imported:
    path = tmp_path_factory.mktemp("import") / "imported.yaml"
    done = cli("import", "--kubeconfig", str(source.kubeconfig), "--namespaces", ",".join(source.namespaces),
               "-o", str(path))
    return Imported(path, done)


def imported_scenario(imported: Imported) -> Path:
    assert imported.done.returncode == 0, imported.done.stderr
    return imported.path


def test_import_reads_the_real_cluster(source: Source, imported: Imported) -> None:
    """The topology as the pods really run (webhook-injected sidecars), the Service's named targetPort resolved,
    the policies as written, nothing left out: no notes."""
    path = imported_scenario(imported)
    mesh, legacy = source.namespaces
    assert imported.done.stdout == ""
    assert imported.done.stderr.splitlines() == [
        f"{path} written: 2 namespaces, 3 workloads, 3 policies; check it with `pytest-istio-mtls predict {path}`"]
    text = path.read_text()
    assert text.splitlines()[1] == (f"# Imported by `pytest-istio-mtls import` from context kind-{CLUSTER}, "
                                    f"namespaces {mesh}, {legacy}.")
    assert "# Not carried over" not in text

    scenario = load_scenario(path)
    assert (scenario.name, scenario.derived) == ("imported", True)
    assert (scenario.mesh.auto_mtls, scenario.mesh.root_namespace) == (True, "istio-system")
    assert {n.name: (n.sidecars, n.ambient) for n in scenario.topology.namespaces} == {
        mesh: (True, False), legacy: (False, False)}
    assert {w.ref: (dict(w.labels), w.service_account, w.sidecar,
                    [(p.name, p.port, p.target_port, p.protocol) for p in w.ports])
            for w in scenario.topology.workloads} == {
        f"httpbin.{mesh}": ({"app": "httpbin", "version": "v1"}, "httpbin", True, [("http", 8000, 8080, "http")]),
        f"curl.{mesh}": ({"app": "curl"}, "curl", True, []),
        f"curl.{legacy}": ({"app": "curl"}, "default", False, []),
    }
    assert [p.ref for p in scenario.policies] == [f"PeerAuthentication {mesh}/default",
                                                  f"PeerAuthentication {mesh}/httpbin",
                                                  f"AuthorizationPolicy {mesh}/httpbin-get"]
    for policy in scenario.policies:
        written = source.written(policy.kind)[policy.name]
        assert dict(policy.manifest) == as_applied({"apiVersion": written["apiVersion"], "kind": policy.kind,
                                                    "metadata": written["metadata"], "spec": written["spec"]})
    assert {(e.source.ref, e.target.ref, e.port.port, e.result.value) for e in scenario.expectations} == {
        (f"curl.{mesh}", f"httpbin.{mesh}", 8000, "mtls"), (f"curl.{legacy}", f"httpbin.{mesh}", 8000, "denied")}

    validated = cli("validate", str(path))
    assert validated.returncode == 0, validated.stdout + validated.stderr


def run_scenario(pytester: pytest.Pytester, path: Path, *options: str) -> None:
    """Run the imported scenario with the plugin; every row must pass (a failed or erroring row fails here)."""
    shutil.copy(path, pytester.path / path.name)
    rows = len(load_scenario(path).expectations)
    result = pytester.runpytest_subprocess("--istio-scenarios", path.name, *options, "-p", "no:cacheprovider")
    output = "\n".join(result.outlines[-60:] + result.errlines[-20:])
    try:
        outcomes = {k: v for k, v in result.parseoutcomes().items() if k not in ("warnings", "warning")}
    except ValueError:
        pytest.fail(f"the run printed no summary (exit {result.ret}):\n{output}")
    assert outcomes == {"passed": rows}, output
    result.stdout.fnmatch_lines([f"*{rows} correct, 0 wrong, 0 errors"])


def test_the_imported_scenario_passes_on_the_local_backend(pytester: pytest.Pytester, imported: Imported) -> None:
    """Real istiod and Envoy sidecars in network namespaces (here: inside the harness's own netns, whose kind
    settings in the environment a local run leaves alone)."""
    run_scenario(pytester, imported_scenario(imported), "--istio-backend=local")


def test_the_imported_scenario_passes_on_kind(pytester: pytest.Pytester, imported: Imported,
                                              source: Source) -> None:
    """On the same cluster: kind keeps a scenario's namespace names, so the source namespaces go first (a run
    would otherwise deploy into them and take over their Deployments and policies)."""
    path = imported_scenario(imported)
    left = source.delete()
    assert not left, f"still there {GONE_TIMEOUT:.0f} s after deleting them: {left}"
    run_scenario(pytester, path, "--istio-backend=kind", f"--istio-kind-cluster={CLUSTER}")
