"""Injected infrastructure faults are ERRORS, never a pass — even where the expected result is a failure."""

from __future__ import annotations

import dataclasses
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_istio_mtls.backends.base import BackendError
from pytest_istio_mtls.backends.local import state
from pytest_istio_mtls.backends.local.pods import ECHO_SCRIPT, Pod
from pytest_istio_mtls.judge.observation import Probe
from pytest_istio_mtls.judge.verdict import decide

from .conftest import CONTROL_PLANE
from .lab import FOO_BAR_LEGACY, Lab, Probed
from .lab import STRICT_FOO as STRICT_FOO_POLICIES

STRICT_FOO = FOO_BAR_LEGACY + STRICT_FOO_POLICIES + """expect:
  - {from: curl.foo, to: "httpbin.foo:8000", result: mtls}
  - {from: curl.legacy, to: "httpbin.foo:8000", result: refused}
  - {from: curl.foo, to: "httpbin.foo:9000", result: mtls}
  - {from: curl.legacy, to: "httpbin.legacy:8000", result: plaintext}
"""


def deploy(lab: Lab) -> None:
    scenario = lab.load(STRICT_FOO)
    lab.backend.signature = None
    lab.backend.deploy(scenario.topology, scenario.mesh)
    lab.backend.apply(scenario)


def rerun(lab: Lab) -> dict[str, Probed]:
    """Probe again under the policies already in force (no re-apply: the fault stays in place)."""
    scenario = lab.load(STRICT_FOO)
    probes = [Probe(e.source, e.target, e.port, e.request) for e in scenario.expectations]
    return {p.pair: Probed(o, decide(o)) for p, o in zip(probes, lab.backend.probe(probes), strict=True)}


def assert_errors(probed: dict[str, Probed], pairs: list[str], reason: str) -> None:
    for pair in pairs:
        verdict = probed[pair].verdict
        assert verdict.result is None, f"{pair} passed as {verdict.result} despite the fault"
        assert reason in verdict.error, f"{pair}: {verdict.error}"


def kill(process: subprocess.Popen[bytes] | None) -> None:
    assert process is not None
    process.kill()
    process.wait()


def kill_sidecar(pod: Pod) -> None:
    """The whole sidecar dies: on istiod ``pod.envoy`` is pilot-agent, and killing it alone leaves its Envoy
    serving (the proxy would still answer, which is not the fault under test)."""
    assert pod.envoy is not None
    envoys = state.descendants(pod.envoy.pid)
    assert envoys or CONTROL_PLANE != "istiod", "pilot-agent has no Envoy child to kill"
    for pid in envoys:
        os.kill(pid, signal.SIGKILL)
    kill(pod.envoy)

    def running() -> list[int]:  # a SIGKILLed process is gone, or a zombie until init reaps it
        return [pid for pid in envoys if state._running(pid)]

    deadline = time.monotonic() + 5
    while running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(), f"Envoy {running()} survived its SIGKILL for 5 s"


def test_killed_server_sidecar(lab: Lab) -> None:
    """A dead server proxy makes every probe to it an error (refused-as-expected included)."""
    deploy(lab)
    kill_sidecar(lab.backend.pods["httpbin.foo"])
    probed = rerun(lab)
    assert_errors(probed, ["curl.foo->httpbin.foo:8000", "curl.legacy->httpbin.foo:8000",
                           "curl.foo->httpbin.foo:9000"], "the sidecar of httpbin.foo is not running")
    assert probed["curl.legacy->httpbin.legacy:8000"].result == "plaintext"  # unrelated pairs still judged


def test_applying_policies_to_a_dead_sidecar_fails_at_once(lab: Lab) -> None:
    """A proxy that died is reported by apply() immediately, not after the propagation deadline."""
    deploy(lab)
    kill_sidecar(lab.backend.pods["httpbin.foo"])
    with pytest.raises(BackendError, match=re.escape("the sidecar of httpbin.foo is not running")):
        lab.backend.apply(lab.load(STRICT_FOO.replace("STRICT", "PERMISSIVE")))


def test_killed_client_sidecar(lab: Lab) -> None:
    """A dead client proxy is an error for that client's probes."""
    deploy(lab)
    kill_sidecar(lab.backend.pods["curl.foo"])
    assert_errors(rerun(lab), ["curl.foo->httpbin.foo:8000"], "the sidecar of curl.foo is not running")


def test_killed_app(lab: Lab) -> None:
    """A dead server app: even the STRICT rejection of plaintext is not counted as 'refused as expected'."""
    deploy(lab)
    kill(lab.backend.pods["httpbin.foo"].app)
    assert_errors(rerun(lab), ["curl.foo->httpbin.foo:8000", "curl.legacy->httpbin.foo:8000"],
                  "the app of httpbin.foo is not running")


def test_missing_name(lab: Lab) -> None:
    """A Service name that does not resolve inside the client pod is an error, not a refusal."""
    deploy(lab)
    hosts = Path("/etc/netns", lab.backend.pods["curl.legacy"].netns, "hosts")
    hosts.write_text("".join(line for line in hosts.read_text().splitlines(keepends=True)
                             if "httpbin.foo." not in line))
    assert_errors(rerun(lab), ["curl.legacy->httpbin.foo:8000"], "does not resolve inside curl.legacy")


def test_wrong_port(lab: Lab) -> None:
    """An app listening on another port than the Service's targetPort is an error, whatever the policy."""
    deploy(lab)
    pod = lab.backend.pods["httpbin.foo"]
    kill(pod.app)
    state = lab.backend.state
    assert state is not None
    pod.app = subprocess.Popen(["ip", "netns", "exec", pod.netns, sys.executable, "-I", str(ECHO_SCRIPT),
                                "--tag", f"imtls-{state.run_id}", "--http", "8081", "--tcp", "9000"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    state.add_pid(pod.app.pid)
    # The app says "ready" once every port is bound: only the port is wrong, never "not up yet".
    assert pod.app.stdout is not None
    ready, _, _ = select.select([pod.app.stdout], [], [], 30)
    assert ready and pod.app.stdout.readline() == b"ready\n", "the echo app did not come up within 30s"
    probed = rerun(lab)
    assert_errors(probed, ["curl.foo->httpbin.foo:8000", "curl.legacy->httpbin.foo:8000"],
                  "does not accept connections on port 8080")
    tcp = probed["curl.foo->httpbin.foo:9000"]
    assert tcp.result == "mtls", (tcp.verdict.error, tcp.observation.evidence.faults)


def test_hung_app_times_out_as_an_error(lab: Lab) -> None:
    """An app that accepts but never answers gives a timeout: an error, never 'refused'."""
    deploy(lab)
    legacy = lab.backend.pods["httpbin.legacy"]
    assert legacy.app is not None
    lab.backend.probe_timeout = 1.0
    os.kill(legacy.app.pid, signal.SIGSTOP)
    try:
        probed = rerun(lab)
    finally:
        os.kill(legacy.app.pid, signal.SIGCONT)
        lab.backend.probe_timeout = 5.0
    assert_errors(probed, ["curl.legacy->httpbin.legacy:8000"], "timed out")


@pytest.mark.parametrize("kind", ["AuthorizationPolicy", "EnvoyFilter"])
def test_unsupported_policies_are_refused_plainly(lab: Lab, kind: str) -> None:
    """Policies the local emulation cannot reproduce faithfully stop the scenario with one sentence; real
    istiod applies them (an ALLOW policy with no rules allows nothing; an EnvoyFilter with no patch does nothing)."""
    group = "security.istio.io/v1" if kind == "AuthorizationPolicy" else "networking.istio.io/v1alpha3"
    scenario = lab.load(FOO_BAR_LEGACY + f"""
policies: |
  apiVersion: {group}
  kind: {kind}
  metadata: {{name: x, namespace: foo}}
expect:
  - {{from: curl.foo, to: "httpbin.foo:8000", result: mtls}}
""")
    if CONTROL_PLANE == "istiod":
        probed = lab.run(scenario)["curl.foo->httpbin.foo:8000"]
        assert probed.result == ("denied" if kind == "AuthorizationPolicy" else "mtls"), probed.verdict.error
        return
    with pytest.raises(BackendError, match=f"{kind} foo/x is not emulated by the local backend.s emulated control plane; fix: run it with real istiod"):
        lab.run(scenario)


@pytest.mark.skipif(CONTROL_PLANE != "istiod", reason="a NACK needs a control plane that sends configuration")
def test_a_nacked_configuration_is_a_setup_error_naming_it(lab: Lab) -> None:
    """Upstream Envoy has none of istio-proxy's own filters: configuration that names one (here Istio's ALPN
    filter, which the local istiod is told to leave out) is rejected, and that stops the scenario at once."""
    scenario = lab.load(FOO_BAR_LEGACY + """
policies: |
  apiVersion: networking.istio.io/v1alpha3
  kind: EnvoyFilter
  metadata: {name: istio-only-filter, namespace: foo}
  spec:
    configPatches:
    - applyTo: HTTP_FILTER
      match: {context: SIDECAR_INBOUND, listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager}}}}
      patch:
        operation: INSERT_FIRST
        value:
          name: istio.alpn
          typed_config: {"@type": type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig}
expect:
  - {from: curl.foo, to: "httpbin.foo:8000", result: mtls}
""")
    try:
        with pytest.raises(BackendError, match=r"the sidecar of (httpbin|curl)\.foo rejected configuration from "
                                               r"istiod \(a NACK\): .*'istio\.alpn'"):
            lab.run(scenario, fresh=True)
    finally:
        lab.backend.apply(dataclasses.replace(scenario, policies=()))  # the same sidecars take good config again
