"""The product on a real kind cluster with real Istio: a run with evidence, a flipped expectation, a frozen
sidecar, Ctrl-C in the middle of a run, and the whole library on the existing backend on that cluster."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pytest_istio_mtls.backends.kube.client import Kube
from pytest_istio_mtls.backends.kube.naming import MANAGED_BY
from pytest_istio_mtls.scenario.loader import load_scenario

from .conftest import CLUSTER, SessionCluster

BUILTIN = Path(__file__).parents[2] / "pytest_istio_mtls" / "scenarios"
STRICT = BUILTIN / "03-namespace-strict.yaml"  # mtls, refused and plaintext rows
AUTHZ = BUILTIN / "14-authz-allow-only-frontend.yaml"  # denied and allowed rows
RUN = ("--istio-backend=kind", f"--istio-kind-cluster={CLUSTER}", "-p", "no:cacheprovider")
SELECTOR = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())


def rows(path: Path) -> int:
    return sum(len(state.expectations) for state in load_scenario(path).states())


def leftovers(kube: Kube) -> list[str]:
    """What runs leave in the cluster when they should not: their namespaces and their policies."""
    found = [f"Namespace {n['metadata']['name']}" for n in kube.list("v1", "Namespace", None, SELECTOR)
             if (n.get("status") or {}).get("phase") != "Terminating"]
    for api_version, kind in (("security.istio.io/v1", "PeerAuthentication"),
                              ("security.istio.io/v1", "AuthorizationPolicy"),
                              ("networking.istio.io/v1", "DestinationRule")):
        found += [f"{kind} {p['metadata']['namespace']}/{p['metadata']['name']}"
                  for p in kube.list(api_version, kind, None, SELECTOR)]
    return found


def test_scenarios_pass_on_kind_with_evidence(pytester: pytest.Pytester, kind_cluster: SessionCluster) -> None:
    """Every row of two built-in scenarios passes, each on its own evidence: an mtls row has the peer's SPIFFE
    identity and TLS records in the capture, a plaintext row the marker in clear, a denial the server's RBAC."""
    directory = pytester.mkdir("scenarios")
    for path in (STRICT, AUTHZ):
        shutil.copy(path, directory / path.name)
    result = pytester.runpytest_subprocess("--istio-scenarios", *RUN, "--istio-report=report")
    total = rows(STRICT) + rows(AUTHZ)
    result.assert_outcomes(passed=total)
    result.stdout.fnmatch_lines([f"total: {total} correct, 0 wrong, 0 errors"])
    report = json.loads((pytester.path / "report" / "report.json").read_text())
    assert report["backend"] == "kind" and report["versions"]["kubernetes"]
    observed = set()
    for row in (row for scenario in report["scenarios"] for row in scenario["rows"]):
        evidence = row["evidence"]["evidence"]
        observed.add(row["observed"])
        if row["observed"] == "mtls":
            assert evidence["peer_identity"].startswith("spiffe://cluster.local/ns/"), row
            assert evidence["capture"]["tls_records"] > 0 and not evidence["capture"]["marker_in_clear"], row
        if row["observed"] == "plaintext":
            assert evidence["capture"]["marker_in_clear"], row
        if row["observed"] == "denied":
            assert any("rbac" in name for name in evidence["server_proxy"]["stats_delta"]), row
    assert {"mtls", "plaintext", "refused", "denied"} <= observed
    assert not leftovers(kind_cluster.kube)


def test_a_flipped_expectation_fails_exactly_that_item(pytester: pytest.Pytester, kind_cluster: SessionCluster) -> None:
    data = yaml.safe_load(STRICT.read_text())
    row = next(r for r in data["expect"] if r["result"] == "mtls")
    row["result"] = "plaintext"
    pytester.mkdir("scenarios")
    (pytester.path / "scenarios" / "strict.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    result = pytester.runpytest_subprocess("--istio-scenarios", *RUN)
    result.assert_outcomes(passed=rows(STRICT) - 1, failed=1)
    failed = [line for line in result.outlines if line.startswith("FAILED ")]
    assert len(failed) == 1 and f"{row['from']}->" in failed[0], failed
    result.stdout.fnmatch_lines(["*expected: plaintext", "*observed: mtls*"])


def test_a_frozen_server_sidecar_is_an_error_never_a_pass(pytester: pytest.Pytester, kind_cluster: SessionCluster) -> None:
    """The server's Envoy stops answering (SIGSTOP, in its own container): the probe is an error, not refused."""
    pytester.makepyfile(f'''
        import time
        from pytest_istio_mtls.backends.kube.client import Kube

        STOP = ("n=0; for p in /proc/[0-9]*; do if grep -qx envoy $p/comm 2>/dev/null; then "
                "kill -$SIG ${{p#/proc/}} && n=$((n+1)); fi; done; echo signalled $n; [ $n -gt 0 ]")

        def signal_envoy(kube, pod, sig):
            done = kube.exec("app", pod, "istio-proxy", ["sh", "-c", STOP.replace("$SIG", sig)])
            assert done.ok, done.describe()

        def test_frozen(istio_probe):
            assert istio_probe("frontend.app", "backend.app:8080").result == "mtls"
            kube = Kube("{pytester.path}/.pytest-istio-mtls/{CLUSTER}/kubeconfig")
            pod = kube.list("v1", "Pod", "app", "app=backend")[0]["metadata"]["name"]
            signal_envoy(kube, pod, "STOP")
            try:
                probe = istio_probe("frontend.app", "backend.app:8080")
                assert probe.result is None, probe.result
                assert probe.verdict.error, probe.verdict
                print("ERROR SEEN:", probe.verdict.error)
            finally:
                signal_envoy(kube, pod, "CONT")
    ''')
    result = pytester.runpytest_subprocess(*RUN, "-s", "--istio-timeout=60")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["ERROR SEEN: *"])
    assert not leftovers(kind_cluster.kube)


def interrupt(arguments: list[str], cwd: Path, after: str, wait: float) -> str:
    """Start a run, send Ctrl-C ``wait`` seconds after a line matching ``after`` appears; its whole output."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # the child must not inherit SIGINT ignored
    try:
        process = subprocess.Popen([sys.executable, "-m", "pytest", *arguments], cwd=cwd, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 600
    for line in process.stdout:
        lines.append(line)
        if re.search(after, line):
            time.sleep(wait)
            process.send_signal(signal.SIGINT)
            break
        assert time.monotonic() < deadline, "".join(lines[-20:])
    rest, _ = process.communicate(timeout=600)
    return "".join(lines) + rest


def test_ctrl_c_mid_run_leaves_nothing_in_the_cluster(pytester: pytest.Pytester, kind_cluster: SessionCluster) -> None:
    directory = pytester.mkdir("scenarios")
    shutil.copy(AUTHZ, directory / AUTHZ.name)
    output = interrupt(["--istio-scenarios", *RUN, "-s"], pytester.path, r"policies .*in force|deploying", 3.0)
    assert "KeyboardInterrupt" in output or "Interrupted" in output, output[-2000:]
    assert not leftovers(kind_cluster.kube), output[-2000:]
    assert not list(Path("/tmp").glob("pytest-istio-mtls-*")), "an istioctl overlay directory was left behind"


def test_ctrl_c_while_creating_removes_the_cluster_it_created(pytester: pytest.Pytester, kind_cluster: SessionCluster) -> None:
    """A run interrupted while its own cluster starts deletes that cluster (a reused one it never touches)."""
    name = "imtls-interrupted"
    directory = pytester.mkdir("scenarios")
    shutil.copy(STRICT, directory / STRICT.name)
    arguments = ["--istio-scenarios", "--istio-backend=kind", f"--istio-kind-cluster={name}", "-s",
                 "-p", "no:cacheprovider"]
    output = interrupt(arguments, pytester.path, rf"kind cluster {name}: creating", 5.0)
    kind = os.environ.get("ISTIO_MTLS_KIND_BIN") or shutil.which("kind") or "kind"
    clusters = subprocess.run([kind, "get", "clusters"], capture_output=True, text=True, check=False).stdout.split()
    assert name not in clusters, output[-2000:]
    assert CLUSTER in clusters


def cluster_listing(kube: Kube) -> set[str]:
    """Every namespace and every object of the kinds a run creates, cluster-wide."""
    kinds = [("v1", "Namespace"), ("v1", "ServiceAccount"), ("v1", "Service"), ("v1", "ConfigMap"),
             ("apps/v1", "Deployment"), ("security.istio.io/v1", "PeerAuthentication"),
             ("security.istio.io/v1", "AuthorizationPolicy"), ("networking.istio.io/v1", "DestinationRule"),
             ("networking.istio.io/v1alpha3", "EnvoyFilter")]
    found = set()
    for api_version, kind in kinds:
        for item in kube.list(api_version, kind, None):
            metadata = item.get("metadata") or {}
            found.add(f"{kind} {metadata.get('namespace') or ''}/{metadata.get('name')}")
    return found


def test_the_existing_backend_runs_the_library_installs_nothing_and_leaves_the_cluster_as_it_was(
        pytester: pytest.Pytester, kind_cluster: SessionCluster) -> None:
    """On a cluster that already runs Istio, the whole library, every form: per-run namespaces, nothing installed,
    everything removed after (the mesh-wide policies too: --istio-allow-mesh-wide, with the run's suffix).
    10-automtls-off is the one left out: it needs meshConfig.enableAutoMtls false, and the
    existing backend never changes a user's mesh config (it says so and stops that scenario: checked below)."""
    before = cluster_listing(kind_cluster.kube)
    result = pytester.runpytest_subprocess("--istio-scenarios", "builtin", "--istio-backend=existing",
                                           "--istio-allow-mesh-wide", f"--istio-kubeconfig={kind_cluster.kubeconfig}",
                                           "-k", "not automtls-off", "-p", "no:cacheprovider")
    library = sorted(BUILTIN.glob("*.yaml"))
    result.assert_outcomes(passed=sum(rows(p) for p in library if "automtls-off" not in p.name),
                           deselected=rows(BUILTIN / "10-automtls-off.yaml"))
    refused = pytester.runpytest_subprocess("--istio-scenarios", str(BUILTIN / "10-automtls-off.yaml"),
                                            "--istio-backend=existing", f"--istio-kubeconfig={kind_cluster.kubeconfig}",
                                            "-p", "no:cacheprovider")
    refused.stdout.fnmatch_lines(["*the scenario needs meshConfig enableAutoMtls=False, which the cluster does not "
                                  "have; the existing backend never changes the mesh config*"])
    # The run deletes its namespaces; Kubernetes removes what is in them afterwards (a namespace terminates).
    deadline = time.monotonic() + 180
    while (left := cluster_listing(kind_cluster.kube) - before) and time.monotonic() < deadline:
        time.sleep(3)
    assert not left, f"still there 180 s after the run: {sorted(left)}"
    assert cluster_listing(kind_cluster.kube) == before
