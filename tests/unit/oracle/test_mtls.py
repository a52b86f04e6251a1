"""Table-driven tests of the oracle, pytest_istio_mtls/oracle/mtls.py and destinationrules.py, against docs/semantics.md.

Every row names the rule of the rule book it pins (P1..P7 server side, O1..O5 client side, X1..X3
outcome and limits) and the test asserts both the predicted result and that the decision chain
cites that rule. Scenarios are written as YAML files and loaded exactly like a user's scenario.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_istio_mtls.model import Request, Result, Scenario
from pytest_istio_mtls.oracle import destinationrules, mtls
from pytest_istio_mtls.scenario.loader import load_scenario

from ...paths import REPO

MTLS, PLAINTEXT, REFUSED = Result.MTLS, Result.PLAINTEXT, Result.REFUSED
UNAVAILABLE, UNKNOWN = Result.UNAVAILABLE, Result.UNKNOWN

# The topology of Istio's authn-policy task: in foo, bar (sidecars) and legacy (no sidecar) a
# httpbin Service 8000 -> container port 8080 and a curl client (the task's `sleep`).
NAMESPACES = """\
    foo: {sidecars: true}
    bar: {sidecars: true}
    legacy: {sidecars: false}
"""
WORKLOADS = """\
    - {name: httpbin, namespace: foo, ports: [{name: http, port: 8000, targetPort: 8080}]}
    - {name: httpbin, namespace: bar, ports: [{name: http, port: 8000, targetPort: 8080}]}
    - {name: httpbin, namespace: legacy, ports: [{name: http, port: 8000, targetPort: 8080}]}
    - {name: curl, namespace: foo}
    - {name: curl, namespace: bar}
    - {name: curl, namespace: legacy}
"""
TOPOLOGY = f"topology:\n  namespaces:\n{NAMESPACES}  workloads:\n{WORKLOADS}"
AMBIENT_TOPOLOGY = (
    f"topology:\n  namespaces:\n{NAMESPACES}    amb: {{ambient: true, sidecars: false}}\n"
    f"  workloads:\n{WORKLOADS}"
    "    - {name: httpbin, namespace: amb, ports: [{name: http, port: 8000, targetPort: 8080}]}\n"
)
AUTO_MTLS_OFF = "mesh: {autoMtls: false}\n"


# --------------------------------------------------------------------------- resource builders


def pa(namespace: str, mode: str | None = None, *, name: str = "default", selector: str | None = None,
       ports: str | None = None) -> str:
    """A PeerAuthentication; ``mode=None`` leaves out the mtls block (UNSET), ``selector`` is an app label."""
    spec = []
    if selector:
        spec.append(f"  selector: {{matchLabels: {{app: {selector}}}}}")
    if mode:
        spec.append(f"  mtls: {{mode: {mode}}}")
    if ports:
        spec.append(f"  portLevelMtls: {ports}")
    body = "spec:\n" + "\n".join(spec) if spec else "spec: {}"
    return (f"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
            f"metadata: {{name: {name}, namespace: {namespace}}}\n{body}\n")


def dr(namespace: str, host: str, mode: str | None = None, *, name: str = "httpbin", tls: str | None = None,
       ports: str | None = None, export_to: str | None = None, extra: str = "") -> str:
    """A DestinationRule; ``mode`` is shorthand for ``tls: {mode: ...}``, ``ports`` a portLevelSettings list."""
    tls = tls or (f"{{mode: {mode}}}" if mode else None)
    spec = [f'  host: "{host}"']
    if export_to:
        spec.append(f"  exportTo: {export_to}")
    if tls or ports:
        spec.append("  trafficPolicy:")
        if tls:
            spec.append(f"    tls: {tls}")
        if ports:
            spec.append(f"    portLevelSettings: {ports}")
    if extra:
        spec.append(f"  {extra}")
    return (f"apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
            f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n" + "\n".join(spec) + "\n")


def resource(kind: str, namespace: str, name: str, spec: str, api: str = "security.istio.io/v1") -> str:
    """Any other Istio resource, with its spec as one YAML flow mapping."""
    return f"apiVersion: {api}\nkind: {kind}\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n"


MESH_STRICT = pa("istio-system", "STRICT")
FOO_STRICT = pa("foo", "STRICT")
ALLOW_NOTHING_FOO = resource("AuthorizationPolicy", "foo", "allow-nothing", "{}")


# --------------------------------------------------------------------------- loading and predicting


def load(tmp_path: Path, policies: tuple[str, ...] | list[str] = (), *, mesh: str = "",
         topology: str = TOPOLOGY) -> Scenario:
    """Write a scenario file (policies as one ``policies: |`` block) and load it like a user's."""
    text = "name: oracle-case\n" + mesh + topology
    if policies:
        text += "policies: |\n" + textwrap.indent("---\n".join(policies), "  ")
    text += "expect:\n  - {from: curl.foo, to: httpbin.foo:8000, result: allowed}\n"
    path = tmp_path / "scenario.yaml"
    path.write_text(text, encoding="utf-8")
    return load_scenario(path)


def predict(scenario: Scenario, client: str, server: str, request: Request | None = None) -> mtls.Prediction:
    """``predict(s, "curl.foo", "httpbin.bar:8000")``."""
    source = scenario.topology.workload(client)
    name, _, port_key = server.partition(":")
    target = scenario.topology.workload(name)
    assert source is not None and target is not None, f"no workload {client} or {name}"
    port = target.port(int(port_key))
    assert port is not None, f"{name} has no port {port_key}"
    return mtls.predict(scenario, source, target, port, request)


def explain(prediction: mtls.Prediction) -> str:
    return "\n".join([f"{prediction.result.value}: {prediction.reason}", *(f"  {s}" for s in prediction.steps)])


# --------------------------------------------------------------------------- the rows


@dataclass(frozen=True)
class Case:
    policies: tuple[str, ...]
    client: str
    server: str
    expected: Result
    rules: tuple[str, ...]
    reason: str = ""  # a fragment the prediction's reason must contain (the deciding resource)
    mesh: str = ""
    topology: str = TOPOLOGY
    request: Request | None = None


def row(case_id: str, policies: list[str], client: str, server: str, expected: Result, rules: str,
        **kwargs: Any) -> Any:
    """One table row; ``rules`` is a space-separated list of rule ids the decision chain must cite."""
    return pytest.param(Case(tuple(policies), client, server, expected, tuple(rules.split()), **kwargs), id=case_id)


HTTPBIN_FOO, HTTPBIN_BAR, HTTPBIN_LEGACY = "httpbin.foo:8000", "httpbin.bar:8000", "httpbin.legacy:8000"
FOO_FQDN = "httpbin.foo.svc.cluster.local"
AUTH = Request(headers={"Authorization": "Bearer abc"})

CASES = [
    # ---- no policy at all -------------------------------------------------------------------
    # P3 + O2 (docs/semantics.md): no PeerAuthentication ⇒ PERMISSIVE; auto mTLS ⇒ Istio mTLS.
    row("P3-O2-no-policy-sidecar-to-sidecar-mtls", [], "curl.foo", HTTPBIN_FOO, MTLS, "P3 O2 X1",
        reason="no PeerAuthentication applies"),
    # P7 + O2: auto mTLS sends plaintext to an endpoint without a sidecar.
    row("P7-O2-no-policy-sidecar-to-legacy-plaintext", [], "curl.foo", HTTPBIN_LEGACY, PLAINTEXT, "P7 O2 X1"),
    # O5 + P3: a client without sidecar sends plaintext; PERMISSIVE accepts it.
    row("O5-P3-no-policy-legacy-to-sidecar-plaintext", [], "curl.legacy", HTTPBIN_FOO, PLAINTEXT, "O5 P3 X1"),
    # O5 + P7: nobody in the mesh.
    row("O5-P7-no-policy-legacy-to-legacy-plaintext", [], "curl.legacy", HTTPBIN_LEGACY, PLAINTEXT, "O5 P7"),

    # ---- P1 scopes --------------------------------------------------------------------------
    # P1: an unselected policy in the root namespace is mesh-wide; STRICT refuses plaintext (X1).
    row("P1-mesh-strict-legacy-refused", [MESH_STRICT], "curl.legacy", HTTPBIN_FOO, REFUSED, "P1 O5 X1",
        reason="PeerAuthentication istio-system/default (mesh-wide)"),
    # P1 + O2: mesh STRICT, sidecar clients still get mTLS.
    row("P1-mesh-strict-sidecar-mtls", [MESH_STRICT], "curl.bar", HTTPBIN_FOO, MTLS, "P1 O2 X1"),
    # P7: mesh STRICT does not bind a server without a sidecar; auto mTLS sends plaintext (O2).
    row("P7-mesh-strict-sidecar-to-legacy-plaintext", [MESH_STRICT], "curl.foo", HTTPBIN_LEGACY, PLAINTEXT,
        "P7 O2"),
    # P1: an unselected policy elsewhere is namespace-wide.
    row("P1-namespace-strict-legacy-refused", [FOO_STRICT], "curl.legacy", HTTPBIN_FOO, REFUSED, "P1 O5 X1",
        reason="PeerAuthentication foo/default (namespace-wide)"),
    # P1: a namespace-wide policy does not reach other namespaces (bar stays PERMISSIVE, P3).
    row("P1-namespace-strict-other-namespace-untouched", [FOO_STRICT], "curl.legacy", HTTPBIN_BAR, PLAINTEXT,
        "P3 O5"),
    # P1: a selector policy binds the selected workload of its namespace.
    row("P1-workload-strict-legacy-refused", [pa("bar", "STRICT", name="httpbin", selector="httpbin")],
        "curl.legacy", HTTPBIN_BAR, REFUSED, "P1 X1", reason="PeerAuthentication bar/httpbin (workload)"),
    # P1: a selector never reaches pods of another namespace.
    row("P1-workload-policy-other-namespace-untouched", [pa("foo", "STRICT", name="httpbin", selector="httpbin")],
        "curl.legacy", HTTPBIN_BAR, PLAINTEXT, "P3"),
    # P1: a selector that matches no labels binds nothing.
    row("P1-workload-selector-no-match", [pa("bar", "STRICT", name="other", selector="other")],
        "curl.legacy", HTTPBIN_BAR, PLAINTEXT, "P3"),
    # P1 trap: a selector policy in the root namespace is ignored (neither mesh-wide nor cross-namespace).
    row("P1-root-namespace-selector-ignored", [pa("istio-system", "STRICT", name="httpbin", selector="httpbin")],
        "curl.legacy", HTTPBIN_FOO, PLAINTEXT, "P1 P3"),

    # ---- P2 most specific wins --------------------------------------------------------------
    # P2: mesh STRICT + workload PERMISSIVE ⇒ PERMISSIVE (most specific, not most restrictive).
    row("P2-mesh-strict-workload-permissive", [MESH_STRICT, pa("foo", "PERMISSIVE", name="httpbin",
                                                                 selector="httpbin")],
        "curl.legacy", HTTPBIN_FOO, PLAINTEXT, "P1 P2", reason="PeerAuthentication foo/httpbin (workload)"),
    # P2: mesh STRICT + workload DISABLE ⇒ DISABLE.
    row("P2-mesh-strict-workload-disable", [MESH_STRICT, pa("foo", "DISABLE", name="httpbin", selector="httpbin")],
        "curl.legacy", HTTPBIN_FOO, PLAINTEXT, "P2", reason="is DISABLE by PeerAuthentication foo/httpbin"),
    # P2 + O2: the same DISABLE workload gets plaintext from sidecar clients too (per-endpoint auto mTLS).
    row("P2-O2-mesh-strict-workload-disable-sidecar", [MESH_STRICT, pa("foo", "DISABLE", name="httpbin",
                                                                      selector="httpbin")],
        "curl.bar", HTTPBIN_FOO, PLAINTEXT, "P2 O2"),
    # P2: mesh STRICT + namespace PERMISSIVE ⇒ PERMISSIVE.
    row("P2-mesh-strict-namespace-permissive", [MESH_STRICT, pa("foo", "PERMISSIVE")],
        "curl.legacy", HTTPBIN_FOO, PLAINTEXT, "P2", reason="PeerAuthentication foo/default (namespace-wide)"),
    # P2: narrower replaces broader in the strict direction as well: mesh DISABLE + namespace STRICT.
    row("P2-mesh-disable-namespace-strict", [pa("istio-system", "DISABLE"), FOO_STRICT],
        "curl.legacy", HTTPBIN_FOO, REFUSED, "P2"),
    # P2, Istio's "policy precedence" (authn-policy task): namespace STRICT + workload DISABLE ⇒ 200.
    row("P2-policy-precedence-namespace-strict-workload-disable",
        [FOO_STRICT, pa("foo", "DISABLE", name="overwrite-example", selector="httpbin")],
        "curl.legacy", HTTPBIN_FOO, PLAINTEXT, "P1 P2", reason="PeerAuthentication foo/overwrite-example (workload)"),

    # ---- P3 UNSET ---------------------------------------------------------------------------
    # P3: a namespace policy without mtls block inherits mesh STRICT.
    row("P3-namespace-no-mtls-block-inherits-mesh", [MESH_STRICT, pa("foo")], "curl.legacy", HTTPBIN_FOO,
        REFUSED, "P3", reason="istio-system/default (mesh-wide)"),
    # P3: an explicit namespace UNSET inherits mesh STRICT.
    row("P3-namespace-unset-inherits-mesh", [MESH_STRICT, pa("foo", "UNSET")], "curl.legacy", HTTPBIN_FOO,
        REFUSED, "P3"),
    # P3: a workload policy without mode inherits namespace STRICT.
    row("P3-workload-unset-inherits-namespace", [FOO_STRICT, pa("foo", name="httpbin", selector="httpbin")],
        "curl.legacy", HTTPBIN_FOO, REFUSED, "P3", reason="foo/default (namespace-wide)"),
    # P3: a mesh-wide policy with UNSET mode means PERMISSIVE.
    row("P3-mesh-unset-is-permissive", [pa("istio-system")], "curl.legacy", HTTPBIN_FOO, PLAINTEXT, "P3"),
    # P3 + O2: ... and auto mTLS still gives sidecar clients mTLS.
    row("P3-mesh-unset-sidecar-mtls", [pa("istio-system", "UNSET")], "curl.bar", HTTPBIN_FOO, MTLS, "P3 O2"),

    # ---- P4 oldest wins ---------------------------------------------------------------------
    # P4: two namespace-wide policies; the first in the file (oldest) wins.
    row("P4-oldest-namespace-wide-wins-strict", [pa("foo", "STRICT", name="first"), pa("foo", "PERMISSIVE",
                                                                                        name="second")],
        "curl.legacy", HTTPBIN_FOO, REFUSED, "P4", reason="PeerAuthentication foo/first"),
    # P4: same two policies in the other order.
    row("P4-oldest-namespace-wide-wins-permissive", [pa("foo", "PERMISSIVE", name="first"),
                                                     pa("foo", "STRICT", name="second")],
        "curl.legacy", HTTPBIN_FOO, PLAINTEXT, "P4", reason="PeerAuthentication foo/first"),
    # P4: two mesh-wide policies; the oldest wins.
    row("P4-oldest-mesh-wide-wins", [pa("istio-system", "PERMISSIVE", name="first"),
                                     pa("istio-system", "STRICT", name="second")],
        "curl.legacy", HTTPBIN_FOO, PLAINTEXT, "P4"),
    # P4: two workload-level policies select httpbin.foo; the oldest (DISABLE) wins.
    row("P4-oldest-workload-level-wins-disable", [pa("foo", "DISABLE", name="first", selector="httpbin"),
                                                  pa("foo", "STRICT", name="second", selector="httpbin")],
        "curl.legacy", HTTPBIN_FOO, PLAINTEXT, "P4", reason="PeerAuthentication foo/first (workload)"),
    # P4: the other order.
    row("P4-oldest-workload-level-wins-strict", [pa("foo", "STRICT", name="first", selector="httpbin"),
                                                 pa("foo", "DISABLE", name="second", selector="httpbin")],
        "curl.legacy", HTTPBIN_FOO, REFUSED, "P4", reason="PeerAuthentication foo/first (workload)"),

    # ---- P5 portLevelMtls -------------------------------------------------------------------
    # P5: keyed on the container port 8080 ⇒ legacy reaches httpbin.bar:8000 again (authn-policy task).
    row("P5-port-level-container-port-disable", [pa("bar", "STRICT", name="httpbin", selector="httpbin",
                                                    ports="{8080: {mode: DISABLE}}")],
        "curl.legacy", HTTPBIN_BAR, PLAINTEXT, "P5", reason="portLevelMtls[8080]"),
    # P5 trap: keyed on the Service port 8000 ⇒ silently ignored, still refused.
    row("P5-port-level-service-port-ignored", [pa("bar", "STRICT", name="httpbin", selector="httpbin",
                                                  ports="{8000: {mode: DISABLE}}")],
        "curl.legacy", HTTPBIN_BAR, REFUSED, "P5", reason="is STRICT by PeerAuthentication bar/httpbin (workload)"),
    # P5 + P3: a port-level UNSET inherits the workload's (itself inherited) STRICT.
    row("P5-port-level-unset-inherits", [FOO_STRICT, pa("foo", name="httpbin", selector="httpbin",
                                                        ports="{8080: {mode: UNSET}}")],
        "curl.legacy", HTTPBIN_FOO, REFUSED, "P3 P5"),
    # P5 + O2: auto mTLS sees the DISABLE port and sends plaintext from sidecar clients.
    row("P5-O2-port-level-disable-sidecar-plaintext", [pa("bar", "STRICT", name="httpbin", selector="httpbin",
                                                          ports="{8080: {mode: DISABLE}}")],
        "curl.foo", HTTPBIN_BAR, PLAINTEXT, "P5 O2"),
    # P5: port-level STRICT on a DISABLE workload refuses plaintext on that port.
    row("P5-port-level-strict-over-workload-disable", [pa("bar", "DISABLE", name="httpbin", selector="httpbin",
                                                         ports="{8080: {mode: STRICT}}")],
        "curl.legacy", HTTPBIN_BAR, REFUSED, "P5"),
    # P5 + O2: ... and sidecar clients get mTLS there (the endpoint's port is not DISABLE).
    row("P5-O2-port-level-strict-sidecar-mtls", [pa("bar", "DISABLE", name="httpbin", selector="httpbin",
                                                   ports="{8080: {mode: STRICT}}")],
        "curl.foo", HTTPBIN_BAR, MTLS, "P5 O2"),

    # ---- O2 the auto-mTLS namespace hint ------------------------------------------------------
    # O2 trap: namespace DISABLE + workload STRICT ⇒ the hint makes sidecar clients send plaintext ⇒ 503.
    row("O2-namespace-disable-workload-strict-sidecar-unavailable",
        [pa("foo", "DISABLE"), pa("foo", "STRICT", name="httpbin", selector="httpbin")],
        "curl.bar", HTTPBIN_FOO, UNAVAILABLE, "P2 O2 X1", reason="namespace foo is DISABLE"),
    # O2: the same for a client in the server's own namespace.
    row("O2-namespace-disable-workload-strict-same-namespace",
        [pa("foo", "DISABLE"), pa("foo", "STRICT", name="httpbin", selector="httpbin")],
        "curl.foo", HTTPBIN_FOO, UNAVAILABLE, "O2"),
    # O5 + X1: clients without sidecar are refused by that STRICT workload, as always.
    row("O2-namespace-disable-workload-strict-legacy-refused",
        [pa("foo", "DISABLE"), pa("foo", "STRICT", name="httpbin", selector="httpbin")],
        "curl.legacy", HTTPBIN_FOO, REFUSED, "O5 X1"),
    # O2: a mesh-wide DISABLE hint has the same effect when the namespace has no policy.
    row("O2-mesh-disable-workload-strict-unavailable",
        [pa("istio-system", "DISABLE"), pa("foo", "STRICT", name="httpbin", selector="httpbin")],
        "curl.bar", HTTPBIN_FOO, UNAVAILABLE, "O2", reason="istio-system/default (mesh-wide)"),
    # O2: namespace PERMISSIVE + workload DISABLE ⇒ per-endpoint decision gives plaintext, 200.
    row("O2-namespace-permissive-workload-disable-plaintext",
        [pa("foo", "PERMISSIVE"), pa("foo", "DISABLE", name="httpbin", selector="httpbin")],
        "curl.bar", HTTPBIN_FOO, PLAINTEXT, "O2"),
    # O2 + P7: a STRICT hint does not matter for an endpoint without sidecar.
    row("O2-P7-strict-namespace-without-sidecars", [pa("legacy", "STRICT")], "curl.foo", HTTPBIN_LEGACY,
        PLAINTEXT, "O2 P7"),

    # ---- O3 explicit DestinationRule TLS ------------------------------------------------------
    # O3: DR DISABLE to a STRICT server ⇒ the client sidecar answers 503.
    row("O3-dr-disable-to-strict-unavailable", [FOO_STRICT, dr("foo", FOO_FQDN, "DISABLE")],
        "curl.bar", HTTPBIN_FOO, UNAVAILABLE, "O3 O4 X1", reason="DestinationRule foo/httpbin"),
    # O3: DR DISABLE to a PERMISSIVE server ⇒ plaintext, 200.
    row("O3-dr-disable-to-permissive-plaintext", [dr("foo", FOO_FQDN, "DISABLE")], "curl.bar", HTTPBIN_FOO,
        PLAINTEXT, "O3 X1"),
    # O3: DR ISTIO_MUTUAL to a server without sidecar ⇒ 503.
    row("O3-dr-istio-mutual-to-no-sidecar-unavailable",
        [dr("legacy", "httpbin.legacy.svc.cluster.local", "ISTIO_MUTUAL")],
        "curl.foo", HTTPBIN_LEGACY, UNAVAILABLE, "O3 P7 X1"),
    # O3: DR ISTIO_MUTUAL to a DISABLE workload ⇒ 503.
    row("O3-dr-istio-mutual-to-disable-unavailable",
        [pa("foo", "DISABLE", name="httpbin", selector="httpbin"), dr("foo", FOO_FQDN, "ISTIO_MUTUAL")],
        "curl.bar", HTTPBIN_FOO, UNAVAILABLE, "O3 X1"),
    # O3: DR ISTIO_MUTUAL to STRICT ⇒ mTLS.
    row("O3-dr-istio-mutual-to-strict-mtls", [FOO_STRICT, dr("foo", FOO_FQDN, "ISTIO_MUTUAL")],
        "curl.bar", HTTPBIN_FOO, MTLS, "O3"),
    # O3 trap: a tls block without mode is DISABLE.
    row("O3-dr-tls-without-mode-is-disable", [FOO_STRICT, dr("foo", FOO_FQDN, tls=f"{{sni: {FOO_FQDN}}}")],
        "curl.bar", HTTPBIN_FOO, UNAVAILABLE, "O3", reason="mode DISABLE"),
    # O3: a DR without tls leaves auto mTLS in charge (O2).
    row("O3-dr-without-tls-auto-mtls", [FOO_STRICT, dr("foo", FOO_FQDN, extra="subsets: [{name: v1, labels: "
                                                                                "{app: httpbin}}]")],
        "curl.bar", HTTPBIN_FOO, MTLS, "O3 O2"),
    # O3: portLevelSettings keyed on the Service port 8000 override the (absent) top-level tls.
    row("O3-dr-port-level-service-port", [FOO_STRICT, dr("foo", FOO_FQDN,
                                                          ports="[{port: {number: 8000}, tls: {mode: DISABLE}}]")],
        "curl.bar", HTTPBIN_FOO, UNAVAILABLE, "O3", reason="portLevelSettings[port 8000]"),
    # O3: portLevelSettings keyed on the container port 8080 match nothing ⇒ auto mTLS.
    row("O3-dr-port-level-container-port-ignored",
        [FOO_STRICT, dr("foo", FOO_FQDN, ports="[{port: {number: 8080}, tls: {mode: DISABLE}}]")],
        "curl.bar", HTTPBIN_FOO, MTLS, "O2"),
    # O3: a port-level tls overrides the top-level tls.
    row("O3-dr-port-level-overrides-top-level",
        [FOO_STRICT, dr("foo", FOO_FQDN, "DISABLE", ports="[{port: {number: 8000}, tls: {mode: ISTIO_MUTUAL}}]")],
        "curl.bar", HTTPBIN_FOO, MTLS, "O3"),
    # O5: DestinationRules do not apply to clients without a sidecar.
    row("O5-dr-ignored-for-client-without-sidecar", [FOO_STRICT, dr("foo", FOO_FQDN, "ISTIO_MUTUAL")],
        "curl.legacy", HTTPBIN_FOO, REFUSED, "O5"),
    # O3 + X1: SIMPLE origination is not Istio mTLS ⇒ 503.
    row("O3-dr-simple-unavailable", [FOO_STRICT, dr("foo", FOO_FQDN, "SIMPLE")], "curl.bar", HTTPBIN_FOO,
        UNAVAILABLE, "O3 X1"),
    # X3: MUTUAL to STRICT depends on the certificates ⇒ unknown.
    row("X3-dr-mutual-to-strict-unknown", [FOO_STRICT, dr("foo", FOO_FQDN, "MUTUAL")], "curl.bar", HTTPBIN_FOO,
        UNKNOWN, "O3 X3"),
    # X1: MUTUAL to a PERMISSIVE sidecar is not terminated ⇒ 503.
    row("X1-dr-mutual-to-permissive-unavailable", [dr("foo", FOO_FQDN, "MUTUAL")], "curl.bar", HTTPBIN_FOO,
        UNAVAILABLE, "O3 X1"),

    # ---- O4 which DestinationRule ------------------------------------------------------------
    # O4: a DR in the client's namespace beats the one in the Service's namespace.
    row("O4-client-namespace-beats-service-namespace",
        [FOO_STRICT, dr("bar", FOO_FQDN, "DISABLE", name="client-side"), dr("foo", FOO_FQDN, "ISTIO_MUTUAL",
                                                                           name="owner")],
        "curl.bar", HTTPBIN_FOO, UNAVAILABLE, "O4 O3", reason="DestinationRule bar/client-side"),
    # O4: the same rules seen from a client in foo: its own namespace holds the owner's rule.
    row("O4-client-namespace-is-service-namespace",
        [FOO_STRICT, dr("bar", FOO_FQDN, "DISABLE", name="client-side"), dr("foo", FOO_FQDN, "ISTIO_MUTUAL",
                                                                           name="owner")],
        "curl.foo", HTTPBIN_FOO, MTLS, "O4 O3", reason="DestinationRule foo/owner"),
    # O4: the Service's namespace beats the root namespace.
    row("O4-service-namespace-beats-root",
        [FOO_STRICT, dr("istio-system", "*.local", "DISABLE", name="global"),
         dr("foo", FOO_FQDN, "ISTIO_MUTUAL", name="owner")],
        "curl.bar", HTTPBIN_FOO, MTLS, "O4", reason="DestinationRule foo/owner"),
    # O4: the root namespace applies when nothing closer matches.
    row("O4-root-namespace-fallback", [FOO_STRICT, dr("istio-system", "*.local", "DISABLE", name="global")],
        "curl.bar", HTTPBIN_FOO, UNAVAILABLE, "O4 O3", reason="DestinationRule istio-system/global"),
    # O4: within a namespace the exact host beats *.foo.svc.cluster.local beats *.local.
    row("O4-most-specific-exact-host",
        [FOO_STRICT, dr("foo", "*.local", "DISABLE", name="any-local"),
         dr("foo", "*.foo.svc.cluster.local", "DISABLE", name="ns-wildcard"),
         dr("foo", FOO_FQDN, "ISTIO_MUTUAL", name="exact")],
        "curl.bar", HTTPBIN_FOO, MTLS, "O4", reason="DestinationRule foo/exact"),
    # O4: *.foo.svc.cluster.local beats *.local.
    row("O4-most-specific-longer-wildcard",
        [FOO_STRICT, dr("foo", "*.local", "DISABLE", name="any-local"),
         dr("foo", "*.foo.svc.cluster.local", "ISTIO_MUTUAL", name="ns-wildcard")],
        "curl.bar", HTTPBIN_FOO, MTLS, "O4", reason="DestinationRule foo/ns-wildcard"),
    # O4: the exact host wins in the breaking direction too.
    row("O4-most-specific-exact-disable",
        [FOO_STRICT, dr("foo", "*.foo.svc.cluster.local", "ISTIO_MUTUAL", name="ns-wildcard"),
         dr("foo", FOO_FQDN, "DISABLE", name="exact")],
        "curl.bar", HTTPBIN_FOO, UNAVAILABLE, "O4 O3", reason="DestinationRule foo/exact"),
    # O4 trap: 'httpbin.foo' contains a dot, is taken literally and matches nothing ⇒ auto mTLS.
    row("O4-dotted-short-host-taken-literally", [FOO_STRICT, dr("foo", "httpbin.foo", "DISABLE")],
        "curl.bar", HTTPBIN_FOO, MTLS, "O2"),
    # O4: the short name 'httpbin' is completed with the rule's own namespace (foo).
    row("O4-short-name-in-own-namespace", [FOO_STRICT, dr("foo", "httpbin", "DISABLE")],
        "curl.bar", HTTPBIN_FOO, UNAVAILABLE, "O4 O3", reason="DestinationRule foo/httpbin"),
    # O4: 'httpbin' written in bar means httpbin.bar, not httpbin.foo.
    row("O4-short-name-in-client-namespace-is-other-service", [FOO_STRICT, dr("bar", "httpbin", "DISABLE")],
        "curl.bar", HTTPBIN_FOO, MTLS, "O2"),
    # O4 trap: exportTo '.' in the Service's namespace hides the rule from other namespaces.
    row("O4-export-to-dot-hidden-from-other-namespaces",
        [FOO_STRICT, dr("foo", FOO_FQDN, "DISABLE", export_to='["."]')],
        "curl.bar", HTTPBIN_FOO, MTLS, "O2"),
    # O4: ... but it still applies to clients in its own namespace.
    row("O4-export-to-dot-visible-in-own-namespace",
        [FOO_STRICT, dr("foo", FOO_FQDN, "DISABLE", export_to='["."]')],
        "curl.foo", HTTPBIN_FOO, UNAVAILABLE, "O4 O3"),
    # O4: exportTo naming the client's namespace makes it visible there.
    row("O4-export-to-client-namespace", [FOO_STRICT, dr("foo", FOO_FQDN, "DISABLE", export_to="[bar]")],
        "curl.bar", HTTPBIN_FOO, UNAVAILABLE, "O4 O3"),

    # ---- O1 autoMtls off ---------------------------------------------------------------------
    # O1: autoMtls off and no DR ⇒ plaintext ⇒ STRICT gives 503.
    row("O1-auto-mtls-off-strict-unavailable", [FOO_STRICT], "curl.bar", HTTPBIN_FOO, UNAVAILABLE, "O1 X1",
        mesh=AUTO_MTLS_OFF),
    # O1: autoMtls off to PERMISSIVE ⇒ plaintext.
    row("O1-auto-mtls-off-permissive-plaintext", [], "curl.bar", HTTPBIN_FOO, PLAINTEXT, "O1", mesh=AUTO_MTLS_OFF),
    # O1 + O3: with autoMtls off an ISTIO_MUTUAL DR restores mTLS (the pre-1.5 recipe).
    row("O1-auto-mtls-off-dr-istio-mutual", [FOO_STRICT, dr("foo", FOO_FQDN, "ISTIO_MUTUAL")],
        "curl.bar", HTTPBIN_FOO, MTLS, "O3", mesh=AUTO_MTLS_OFF),
    # O1 + O3: with autoMtls off a DR without tls means plaintext (network-issues doc).
    row("O1-auto-mtls-off-dr-without-tls", [FOO_STRICT, dr("foo", FOO_FQDN, extra="subsets: [{name: v1, labels: "
                                                                                  "{app: httpbin}}]")],
        "curl.bar", HTTPBIN_FOO, UNAVAILABLE, "O3 O1", mesh=AUTO_MTLS_OFF),

    # ---- X2 unmodelled resources ----------------------------------------------------------------
    # A1 A2 (authz, pinned in test_authz.py): an allow-nothing policy on the server denies a succeeding pair.
    row("A2-authorization-policy-allow-nothing", [ALLOW_NOTHING_FOO], "curl.bar", HTTPBIN_FOO, Result.DENIED,
        "X1 A1 A2", reason="foo/allow-nothing has no rule (allow-nothing)"),
    # A5: ... also a plaintext success from a client without sidecar.
    row("A2-authorization-policy-allow-nothing-plaintext", [ALLOW_NOTHING_FOO], "curl.legacy", HTTPBIN_FOO,
        Result.DENIED, "A2 A5"),
    # X1: authorization cannot rescue plaintext → STRICT: still refused.
    row("X2-authorization-policy-refused-stays-refused", [FOO_STRICT, ALLOW_NOTHING_FOO], "curl.legacy",
        HTTPBIN_FOO, REFUSED, "X1"),
    # X1: ... nor a 503 from the client sidecar.
    row("X2-authorization-policy-unavailable-stays-unavailable",
        [FOO_STRICT, dr("foo", FOO_FQDN, "DISABLE"), ALLOW_NOTHING_FOO], "curl.bar", HTTPBIN_FOO, UNAVAILABLE, "X1"),
    # P7: an AuthorizationPolicy on a server without sidecar has no effect.
    row("X2-authorization-policy-no-sidecar-no-effect",
        [resource("AuthorizationPolicy", "legacy", "allow-nothing", "{}")],
        "curl.foo", HTTPBIN_LEGACY, PLAINTEXT, "P7"),
    # X2: an AuthorizationPolicy in another namespace does not bind the server.
    row("X2-authorization-policy-other-namespace", [resource("AuthorizationPolicy", "bar", "allow-nothing", "{}")],
        "curl.foo", HTTPBIN_FOO, MTLS, "X1"),
    # A1: an unselected AuthorizationPolicy in the root namespace is mesh-wide.
    row("A1-authorization-policy-mesh-wide", [resource("AuthorizationPolicy", "istio-system", "deny-all",
                                                       "{action: DENY, rules: [{}]}")],
        "curl.bar", HTTPBIN_FOO, Result.DENIED, "A1 A2", reason="AuthorizationPolicy istio-system/deny-all"),
    # A1: a selector in the root namespace matches workloads of every namespace (unlike P1 for PeerAuthentication).
    row("A1-authorization-policy-root-selector", [resource("AuthorizationPolicy", "istio-system", "httpbin",
                                                           "{selector: {matchLabels: {app: httpbin}}}")],
        "curl.bar", HTTPBIN_FOO, Result.DENIED, "A1 A2", reason="istio-system/httpbin has no rule"),
    # X2: AUDIT does not allow or deny.
    row("X2-authorization-policy-audit-ignored", [resource("AuthorizationPolicy", "foo", "audit",
                                                           "{action: AUDIT, rules: [{}]}")],
        "curl.bar", HTTPBIN_FOO, MTLS, "X1"),
    # X2: a RequestAuthentication matters only when the probe carries a token.
    row("X2-request-authentication-with-token", [resource(
        "RequestAuthentication", "foo", "jwt",
        "{selector: {matchLabels: {app: httpbin}}, jwtRules: [{issuer: testing@secure.istio.io}]}")],
        "curl.bar", HTTPBIN_FOO, UNKNOWN, "X2", reason="RequestAuthentication foo/jwt", request=AUTH),
    row("X2-request-authentication-without-token", [resource(
        "RequestAuthentication", "foo", "jwt",
        "{selector: {matchLabels: {app: httpbin}}, jwtRules: [{issuer: testing@secure.istio.io}]}")],
        "curl.bar", HTTPBIN_FOO, MTLS, "X1"),
    # X2: an EnvoyFilter binding the client's sidecar.
    row("X2-envoy-filter-on-client", [resource("EnvoyFilter", "bar", "tweak",
                                               "{workloadSelector: {labels: {app: curl}}, configPatches: []}",
                                               api="networking.istio.io/v1alpha3")],
        "curl.bar", HTTPBIN_FOO, UNKNOWN, "X2", reason="EnvoyFilter bar/tweak"),
    # X2: a Sidecar resource binding the server's sidecar.
    row("X2-sidecar-resource-on-server", [resource("Sidecar", "foo", "default", "{egress: [{hosts: ['./*']}]}",
                                                   api="networking.istio.io/v1")],
        "curl.bar", HTTPBIN_FOO, UNKNOWN, "X2", reason="Sidecar foo/default"),
    # X2: a VirtualService covering the host (short name, completed with its namespace).
    row("X2-virtual-service-unknown", [resource("VirtualService", "foo", "httpbin",
                                                "{hosts: [httpbin], http: [{route: [{destination: {host: httpbin}}]}]}",
                                                api="networking.istio.io/v1")],
        "curl.bar", HTTPBIN_FOO, UNKNOWN, "X2", reason="VirtualService foo/httpbin"),
    # X2: routing does not happen for a client without a sidecar.
    row("X2-virtual-service-client-without-sidecar", [resource(
        "VirtualService", "foo", "httpbin", "{hosts: [httpbin], http: [{route: [{destination: {host: httpbin}}]}]}",
        api="networking.istio.io/v1")],
        "curl.legacy", HTTPBIN_FOO, PLAINTEXT, "O5"),
    # X2: a ServiceEntry covering the host.
    row("X2-service-entry-unknown", [resource(
        "ServiceEntry", "foo", "httpbin",
        f"{{hosts: [{FOO_FQDN}], ports: [{{number: 8000, name: http, protocol: HTTP}}], resolution: DNS}}",
        api="networking.istio.io/v1")],
        "curl.bar", HTTPBIN_FOO, UNKNOWN, "X2", reason="ServiceEntry foo/httpbin"),
    # X2: ambient mode is not predicted.
    row("X2-ambient-server-unknown", [], "curl.foo", "httpbin.amb:8000", UNKNOWN, "X2", reason="ambient",
        topology=AMBIENT_TOPOLOGY),
    # X2: ... even where a sidecar-mode answer would be a failure.
    row("X2-ambient-server-strict-unknown", [pa("amb", "STRICT")], "curl.legacy", "httpbin.amb:8000", UNKNOWN,
        "X2", reason="ambient", topology=AMBIENT_TOPOLOGY),

    # ---- X3 --------------------------------------------------------------------------------------
    # X3: a DestinationRule with workloadSelector is not modelled.
    row("X3-dr-workload-selector-unknown",
        [dr("foo", FOO_FQDN, "DISABLE", extra="workloadSelector: {matchLabels: {app: curl}}")],
        "curl.foo", HTTPBIN_FOO, UNKNOWN, "X3", reason="workloadSelector"),
]


@pytest.mark.parametrize("case", CASES)
def test_oracle(case: Case, tmp_path: Path) -> None:
    """The oracle predicts the row's result and cites the row's rule(s) in its decision chain."""
    scenario = load(tmp_path, case.policies, mesh=case.mesh, topology=case.topology)
    prediction = predict(scenario, case.client, case.server, case.request)
    assert prediction.result is case.expected, explain(prediction)
    cited = {step.rule for step in prediction.steps}
    assert set(case.rules) <= cited, f"missing {set(case.rules) - cited}\n{explain(prediction)}"
    assert case.reason in prediction.reason, explain(prediction)


def test_ignored_policies_are_explained(tmp_path: Path) -> None:
    """P1/P4/P5: the chain names each policy Istio ignores and why."""
    scenario = load(tmp_path, [
        pa("istio-system", "STRICT", name="selected", selector="httpbin"),
        pa("bar", "STRICT", name="first"),
        pa("bar", "DISABLE", name="second"),
        pa("bar", "STRICT", name="httpbin", selector="httpbin", ports="{8000: {mode: DISABLE}}"),
    ])
    steps = [str(s) for s in predict(scenario, "curl.legacy", HTTPBIN_BAR).steps]
    assert any(s.startswith("[P1]") and "istio-system/selected" in s and "ignores" in s for s in steps), steps
    assert any(s.startswith("[P4]") and "bar/second is ignored" in s for s in steps), steps
    assert any(s.startswith("[P5]") and "portLevelMtls[8000]" in s and "Service port" in s for s in steps), steps


# --------------------------------------------------------------------------- Istio's documented tables

# Istio's authn-policy task (https://istio.io/latest/docs/tasks/security/authentication/authn-policy/),
# whose tables are checked against a real cluster by the page's test.sh. Each cell is
# "client server <Istio's HTTP code> <the oracle's result>"; 000 is curl's code for a reset
# connection (exit 56). The result column refines 200 into mtls/plaintext by the rule book.

NO_POLICY_TABLE = """
curl.foo     httpbin.foo     200  mtls
curl.foo     httpbin.bar     200  mtls
curl.foo     httpbin.legacy  200  plaintext
curl.bar     httpbin.foo     200  mtls
curl.bar     httpbin.bar     200  mtls
curl.bar     httpbin.legacy  200  plaintext
curl.legacy  httpbin.foo     200  plaintext
curl.legacy  httpbin.bar     200  plaintext
curl.legacy  httpbin.legacy  200  plaintext
"""
MESH_STRICT_TABLE = """
curl.foo     httpbin.foo     200  mtls
curl.foo     httpbin.bar     200  mtls
curl.foo     httpbin.legacy  200  plaintext
curl.bar     httpbin.foo     200  mtls
curl.bar     httpbin.bar     200  mtls
curl.bar     httpbin.legacy  200  plaintext
curl.legacy  httpbin.foo     000  refused
curl.legacy  httpbin.bar     000  refused
curl.legacy  httpbin.legacy  200  plaintext
"""
NAMESPACE_FOO_STRICT_TABLE = """
curl.foo     httpbin.foo     200  mtls
curl.foo     httpbin.bar     200  mtls
curl.foo     httpbin.legacy  200  plaintext
curl.bar     httpbin.foo     200  mtls
curl.bar     httpbin.bar     200  mtls
curl.bar     httpbin.legacy  200  plaintext
curl.legacy  httpbin.foo     000  refused
curl.legacy  httpbin.bar     200  plaintext
curl.legacy  httpbin.legacy  200  plaintext
"""
WORKLOAD_BAR_STRICT_TABLE = """
curl.foo     httpbin.foo     200  mtls
curl.foo     httpbin.bar     200  mtls
curl.foo     httpbin.legacy  200  plaintext
curl.bar     httpbin.foo     200  mtls
curl.bar     httpbin.bar     200  mtls
curl.bar     httpbin.legacy  200  plaintext
curl.legacy  httpbin.foo     000  refused
curl.legacy  httpbin.bar     000  refused
curl.legacy  httpbin.legacy  200  plaintext
"""
PORT_LEVEL_TABLE = """
curl.foo     httpbin.foo     200  mtls
curl.foo     httpbin.bar     200  plaintext
curl.foo     httpbin.legacy  200  plaintext
curl.bar     httpbin.foo     200  mtls
curl.bar     httpbin.bar     200  plaintext
curl.bar     httpbin.legacy  200  plaintext
curl.legacy  httpbin.foo     000  refused
curl.legacy  httpbin.bar     200  plaintext
curl.legacy  httpbin.legacy  200  plaintext
"""
# Istio verifies only the curl.legacy -> httpbin.foo cell of this step (200); the other cells
# follow from the same rules (P2, O2) and are checked too.
POLICY_PRECEDENCE_TABLE = """
curl.foo     httpbin.foo     200  plaintext
curl.foo     httpbin.bar     200  plaintext
curl.foo     httpbin.legacy  200  plaintext
curl.bar     httpbin.foo     200  plaintext
curl.bar     httpbin.bar     200  plaintext
curl.bar     httpbin.legacy  200  plaintext
curl.legacy  httpbin.foo     200  plaintext
curl.legacy  httpbin.bar     200  plaintext
curl.legacy  httpbin.legacy  200  plaintext
"""
BAR_WORKLOAD_STRICT = pa("bar", "STRICT", name="httpbin", selector="httpbin")
BAR_WORKLOAD_PORT_LEVEL = pa("bar", "STRICT", name="httpbin", selector="httpbin", ports="{8080: {mode: DISABLE}}")
OVERWRITE_EXAMPLE = pa("foo", "DISABLE", name="overwrite-example", selector="httpbin")

# The task applies its policies one after another; each table is the state at that point.
ISTIO_TABLES = [
    pytest.param([], NO_POLICY_TABLE, id="P3-no-policy"),
    pytest.param([MESH_STRICT], MESH_STRICT_TABLE, id="P1-P7-mesh-wide-strict"),
    pytest.param([FOO_STRICT], NAMESPACE_FOO_STRICT_TABLE, id="P1-namespace-foo-strict"),
    pytest.param([FOO_STRICT, BAR_WORKLOAD_STRICT], WORKLOAD_BAR_STRICT_TABLE, id="P1-workload-httpbin-bar-strict"),
    pytest.param([FOO_STRICT, BAR_WORKLOAD_PORT_LEVEL], PORT_LEVEL_TABLE, id="P5-port-level-8080-disable"),
    pytest.param([FOO_STRICT, BAR_WORKLOAD_PORT_LEVEL, OVERWRITE_EXAMPLE], POLICY_PRECEDENCE_TABLE,
                 id="P2-policy-precedence"),
]
HTTP_CODE = {MTLS: "200", PLAINTEXT: "200", REFUSED: "000", UNAVAILABLE: "503", Result.DENIED: "403"}


def parse_table(table: str) -> list[tuple[str, str, str, Result]]:
    rows = []
    for line in table.strip().splitlines():
        client, server, code, result = line.split()
        rows.append((client, server, code, Result(result)))
    return rows


@pytest.mark.parametrize(("policies", "table"), ISTIO_TABLES)
def test_istio_authn_policy_tables(policies: list[str], table: str, tmp_path: Path) -> None:
    """Every cell of Istio's test-verified authn-policy tables, for all 3 x 3 client/server pairs."""
    scenario = load(tmp_path, policies)
    rows = parse_table(table)
    clients = [w.ref for w in scenario.topology.workloads if not w.is_server]
    servers = [w.ref for w in scenario.topology.servers]
    assert sorted((c, s) for c, s, _, _ in rows) == sorted((c, s) for c in clients for s in servers)
    got, want = {}, {}
    for client, server, code, result in rows:
        assert HTTP_CODE[result] == code, f"table row {client} -> {server}: {result} cannot answer {code}"
        prediction = predict(scenario, client, f"{server}:8000")
        got[f"{client} -> {server}"] = prediction.result.value
        want[f"{client} -> {server}"] = result.value
    assert got == want


# The rule book's outcome table (docs/semantics.md, X1), one scenario per row; DR examples included.
OUTCOME_TABLE = [
    # client without sidecar
    row("X1-no-sidecar-to-strict", [FOO_STRICT], "curl.legacy", HTTPBIN_FOO, REFUSED, "O5 X1"),
    row("X1-no-sidecar-to-permissive", [pa("foo", "PERMISSIVE")], "curl.legacy", HTTPBIN_FOO, PLAINTEXT, "O5 X1"),
    row("X1-no-sidecar-to-disable", [pa("foo", "DISABLE")], "curl.legacy", HTTPBIN_FOO, PLAINTEXT, "O5 X1"),
    row("X1-no-sidecar-to-no-sidecar", [MESH_STRICT], "curl.legacy", HTTPBIN_LEGACY, PLAINTEXT, "O5 P7 X1"),
    # sidecar client, auto mTLS
    row("X1-auto-to-strict", [FOO_STRICT], "curl.bar", HTTPBIN_FOO, MTLS, "O2 X1"),
    row("X1-auto-to-permissive", [pa("foo", "PERMISSIVE")], "curl.bar", HTTPBIN_FOO, MTLS, "O2 X1"),
    row("X1-auto-to-disable", [pa("foo", "DISABLE")], "curl.bar", HTTPBIN_FOO, PLAINTEXT, "O2 X1"),
    row("X1-auto-to-no-sidecar", [], "curl.bar", HTTPBIN_LEGACY, PLAINTEXT, "O2 P7 X1"),
    row("X1-auto-namespace-hint-disable-to-strict", [pa("foo", "DISABLE"), pa("foo", "STRICT", name="httpbin",
                                                                              selector="httpbin")],
        "curl.bar", HTTPBIN_FOO, UNAVAILABLE, "O2 X1"),
    # sidecar client, DestinationRule TLS
    row("X1-dr-disable-to-strict", [FOO_STRICT, dr("foo", FOO_FQDN, "DISABLE")], "curl.bar", HTTPBIN_FOO,
        UNAVAILABLE, "O3 X1"),
    row("X1-dr-disable-to-permissive", [pa("foo", "PERMISSIVE"), dr("foo", FOO_FQDN, "DISABLE")], "curl.bar",
        HTTPBIN_FOO, PLAINTEXT, "O3 X1"),
    row("X1-dr-disable-to-disable", [pa("foo", "DISABLE"), dr("foo", FOO_FQDN, "DISABLE")], "curl.bar",
        HTTPBIN_FOO, PLAINTEXT, "O3 X1"),
    row("X1-dr-istio-mutual-to-no-sidecar", [dr("legacy", "httpbin.legacy.svc.cluster.local", "ISTIO_MUTUAL")],
        "curl.bar", HTTPBIN_LEGACY, UNAVAILABLE, "O3 X1"),
    row("X1-dr-istio-mutual-to-disable", [pa("foo", "DISABLE"), dr("foo", FOO_FQDN, "ISTIO_MUTUAL")], "curl.bar",
        HTTPBIN_FOO, UNAVAILABLE, "O3 X1"),
    row("X1-dr-istio-mutual-to-strict", [FOO_STRICT, dr("foo", FOO_FQDN, "ISTIO_MUTUAL")], "curl.bar",
        HTTPBIN_FOO, MTLS, "O3 X1"),
    row("X1-dr-istio-mutual-to-permissive", [pa("foo", "PERMISSIVE"), dr("foo", FOO_FQDN, "ISTIO_MUTUAL")],
        "curl.bar", HTTPBIN_FOO, MTLS, "O3 X1"),
    row("X1-dr-simple-to-no-sidecar", [dr("legacy", "httpbin.legacy.svc.cluster.local", "SIMPLE")],
        "curl.bar", HTTPBIN_LEGACY, UNAVAILABLE, "O3 X1"),
    row("X1-dr-mutual-to-strict", [FOO_STRICT, dr("foo", FOO_FQDN, "MUTUAL")], "curl.bar", HTTPBIN_FOO, UNKNOWN,
        "O3 X3"),
    # sidecar client, auto mTLS off
    row("X1-auto-mtls-off-to-strict", [FOO_STRICT], "curl.bar", HTTPBIN_FOO, UNAVAILABLE, "O1 X1",
        mesh=AUTO_MTLS_OFF),
]


@pytest.mark.parametrize("case", OUTCOME_TABLE)
def test_outcome_table(case: Case, tmp_path: Path) -> None:
    """Each row of the rule book's outcome table (X1) holds, with the client-side rule that decided it."""
    test_oracle(case, tmp_path)


# --------------------------------------------------------------------------- rule book consistency

RULE_BOOK = REPO / "docs" / "semantics.md"


def documented_rules() -> set[str]:
    if not RULE_BOOK.is_file():
        pytest.skip("docs/semantics.md is not part of this installation")
    return set(re.findall(r"^### ([POX]\d) ", RULE_BOOK.read_text(encoding="utf-8"), flags=re.MULTILINE))


def test_every_cited_rule_is_documented() -> None:
    """Every rule id the oracle's code can cite has a section in docs/semantics.md."""
    source = "".join(Path(m.__file__).read_text(encoding="utf-8") for m in (mtls, destinationrules))  # type: ignore[arg-type]
    cited = set(re.findall(r'Step\(\s*"([A-Z]\d)"', source))
    assert cited, "no Step rule ids found in oracle/mtls.py and oracle/destinationrules.py"
    assert cited <= documented_rules()


def test_every_documented_rule_is_pinned() -> None:
    """Every rule of docs/semantics.md except P6 (folded into X1) is cited by at least one row."""
    pinned = {rule for param in [*CASES, *OUTCOME_TABLE] for rule in param.values[0].rules}
    assert documented_rules() - {"P6"} <= pinned
