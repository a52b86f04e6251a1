"""Scenario names ↔ cluster names.

On kind the cluster is ours and namespaces keep their scenario names. On an existing, shared
cluster every scenario namespace becomes ``<ns>-<runid>``, and every namespaced reference inside a
policy follows (metadata, hosts, exportTo, AuthorizationPolicy namespaces, principals and service
accounts, in sources and in ``when`` conditions), so the scenario means the same thing in its own
namespaces. Evidence read back from the cluster is mapped the other way, so verdicts compare against
the scenario's names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..base import BackendError

MANAGED_BY = {"app.kubernetes.io/managed-by": "pytest-istio-mtls"}  # on every object a run creates
RUN_LABEL = "istio-mtls.pytest.io/run"  # which run created an object

CLUSTER_DOMAIN = "svc.cluster.local"
NAMESPACE_LIST_KEYS = ("namespaces", "notNamespaces", "exportTo")
PRINCIPAL_KEYS = ("principals", "notPrincipals")
SERVICE_ACCOUNT_KEYS = ("serviceAccounts", "notServiceAccounts")
HOST_KEYS = ("host", "hosts", "notHosts")
PRINCIPAL = re.compile(r"(^|/)ns/([^/]+)/sa/")


class Naming:
    """``run_id=None``: identity mapping (kind). Otherwise every non-root namespace gets the suffix."""

    def __init__(self, run_id: str | None, root_namespace: str = "istio-system",
                 cluster_trust_domain: str = "cluster.local") -> None:
        self.run_id = run_id
        self.root = root_namespace
        self.cluster_trust_domain = cluster_trust_domain
        self._known: dict[str, str] = {}

    @property
    def mapped(self) -> bool:
        return self.run_id is not None

    def ns(self, namespace: str) -> str:
        if self.run_id is None or namespace == self.root:
            return namespace
        name = f"{namespace[:62 - len(self.run_id)]}-{self.run_id}"
        self._known[namespace] = name
        return name

    def host(self, name: str, namespace: str) -> str:
        return f"{name}.{self.ns(namespace)}.{CLUSTER_DOMAIN}"

    def policy_name(self, name: str, namespace: str) -> str:
        """Mesh-wide policies keep their namespace but get the run suffix, so they never replace
        (or get replaced by) the cluster's own objects of the same name."""
        if self.run_id is not None and namespace == self.root:
            return f"{name[:252 - len(self.run_id)]}-{self.run_id}"
        return name

    # -- scenario → cluster ----------------------------------------------------------------------------

    def rewrite(self, manifest: Mapping[str, Any], namespaces: Iterable[str]) -> dict[str, Any]:
        """A copy of a policy as it is applied: names mapped, ``managed-by`` (and run) labels added."""
        # A JSON round trip: what the API server receives (map keys such as portLevelMtls ports become strings).
        obj: dict[str, Any] = json.loads(json.dumps(dict(manifest), default=str))
        known = set(namespaces)
        metadata = obj.setdefault("metadata", {})
        namespace = str(metadata.get("namespace", ""))
        metadata["name"] = self.policy_name(str(metadata.get("name", "")), namespace)
        metadata["namespace"] = self.ns(namespace)
        labels = dict(metadata.get("labels") or {})
        labels.update(MANAGED_BY)
        if self.run_id is not None:
            labels[RUN_LABEL] = self.run_id
        metadata["labels"] = labels
        if self.run_id is not None and isinstance(obj.get("spec"), dict):
            obj["spec"] = self._walk(obj["spec"], None, (known | {namespace}) - {self.root})
        return obj

    def _walk(self, value: Any, key: str | None, known: set[str]) -> Any:
        if isinstance(value, dict):
            if key == "when" or ("key" in value and ("values" in value or "notValues" in value)):
                return self._condition(value, known)
            return {k: self._walk(v, k, known) for k, v in value.items()}
        if isinstance(value, list):
            return [self._walk(item, key, known) for item in value]
        if not isinstance(value, str):
            return value
        if key in NAMESPACE_LIST_KEYS:
            return self.ns(value) if value in known else value
        if key in PRINCIPAL_KEYS:
            return self._principal(value, known)
        if key in SERVICE_ACCOUNT_KEYS:
            return self._service_account(value, known)
        if key in HOST_KEYS:
            return self._host(value, known)
        return value

    def _condition(self, condition: dict[str, Any], known: set[str]) -> dict[str, Any]:
        result = dict(condition)
        attribute = str(condition.get("key", ""))
        for field in ("values", "notValues"):
            items = condition.get(field)
            if not isinstance(items, list):
                continue
            if attribute == "source.namespace":
                result[field] = [self.ns(v) if v in known else v for v in items]
            elif attribute == "source.principal":
                result[field] = [self._principal(str(v), known) for v in items]
            elif attribute == "source.serviceAccount":
                result[field] = [self._service_account(str(v), known) for v in items]
        return result

    def _service_account(self, account: str, known: set[str]) -> str:
        """``foo/curl`` follows foo; a bare ``curl`` is in the policy's namespace, which is mapped already."""
        namespace, slash, name = account.partition("/")
        return f"{self.ns(namespace)}/{name}" if slash and namespace in known else account

    def _principal(self, principal: str, known: set[str]) -> str:
        def replace(match: re.Match[str]) -> str:
            namespace = match[2]
            return f"{match[1]}ns/{self.ns(namespace) if namespace in known else namespace}/sa/"

        return PRINCIPAL.sub(replace, principal)

    def _host(self, host: str, known: set[str]) -> str:
        if "/" in host:  # Sidecar / exportTo style: namespace/host
            namespace, _, rest = host.partition("/")
            return f"{self.ns(namespace) if namespace in known else namespace}/{self._host(rest, known)}"
        name, colon, port = host.partition(":")
        labels = name.split(".")
        if len(labels) >= 2 and labels[1] in known and (len(labels) == 2 or labels[2] == "svc"):
            labels[1] = self.ns(labels[1])
        return ".".join(labels) + colon + port

    # -- cluster → scenario ----------------------------------------------------------------------------

    def unmap(self, text: str) -> str:
        """Cluster names in evidence (stat names, log fields, SPIFFE IDs) back to scenario names."""
        if self.run_id is None:
            return text
        for original, cluster in self._known.items():
            text = re.sub(rf"(?<![\w-]){re.escape(cluster)}(?![\w-])", original, text)
        if self.cluster_trust_domain != "cluster.local":
            text = text.replace(f"spiffe://{self.cluster_trust_domain}/ns/", "spiffe://cluster.local/ns/")
        return text


def run_labels(naming: Naming) -> dict[str, str]:
    """The labels every object a run creates carries: managed-by, and the run's id on a shared cluster."""
    return {**MANAGED_BY, **({RUN_LABEL: naming.run_id} if naming.run_id is not None else {})}


def mesh_wide(policies: Iterable[Any], root_namespace: str) -> list[str]:
    """Refs of the policies that would apply mesh-wide (they live in the root namespace)."""
    return [f"{p.kind} {p.namespace}/{p.name}" for p in policies if p.namespace == root_namespace]


def refuse_mesh_wide(policies: Iterable[Any], root_namespace: str, scenario: str) -> None:
    found = mesh_wide(policies, root_namespace)
    if found:
        raise BackendError(f"scenario {scenario} applies mesh-wide policies ({', '.join(found)}), which would change "
                           "every workload of the shared cluster; pass --istio-allow-mesh-wide to allow it")
