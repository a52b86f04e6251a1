"""What a client without a sidecar presents when it speaks TLS itself (a probe's ``tls:``), on a real cluster.

``no-cert`` presents nothing. ``foreign-cert``: a certificate shaped like the client's workload identity (the same
SPIFFE URI) from a CA the mesh does not trust, made in memory. ``mesh-cert``: what a stolen workload key gives, a
key and certificate the cluster's own CA issued to the client's service account the normal way: a pod of that
service account with an injected sidecar writes them to a memory volume (``manifests.credential_pod``), the run
reads them once and deletes the pod. Keys stay in this process's memory and reach the probe on its exec's stdin;
they are never written to a file of ours, a report or a log.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from cryptography import x509

from ...judge.observation import Probe
from ..base import BackendError
from ..certs import CertificateAuthority
from .client import KubeApi
from .manifests import OUTPUT_CERTS, credential_pod
from .naming import Naming
from .propagation import poll

Pair = tuple[bytes, bytes]  # certificate chain, private key (PEM)


def spiffe_of(chain: bytes) -> str:
    """The URI SAN of the first certificate of a PEM chain ('' when there is none)."""
    try:
        certificate = x509.load_pem_x509_certificate(chain)
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return ""
    uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else ""


class Credentials:
    """Issued once per (kind, namespace, service account) and kept for the run."""

    def __init__(self, kube: KubeApi, naming: Naming, image_map: Mapping[str, str], revision: str | None,
                 timeout: float, progress: Callable[[str], None]) -> None:
        self.kube = kube
        self.naming = naming
        self.image_map = image_map
        self.revision = revision
        self.timeout = timeout
        self.progress = progress
        self._foreign: CertificateAuthority | None = None
        self._issued: dict[tuple[str, str, str], Pair] = {}

    def __call__(self, probe: Probe) -> Pair | None:
        tls, client = probe.request.tls, probe.source
        if not tls or tls == "no-cert":
            return None
        key = (tls, client.namespace, client.service_account)
        if key not in self._issued:
            namespace = self.naming.ns(client.namespace)
            if tls == "foreign-cert":
                if self._foreign is None:
                    self._foreign = CertificateAuthority(None, self.naming.cluster_trust_domain)
                self._issued[key] = self._foreign.leaf(namespace, client.service_account)
            else:
                self._issued[key] = self._from_cluster(probe)
        return self._issued[key]

    def _from_cluster(self, probe: Probe) -> Pair:
        client = probe.source
        pod = credential_pod(client, self.naming, self.image_map, self.revision)
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        want = f"spiffe://{self.naming.cluster_trust_domain}/ns/{namespace}/sa/{client.service_account}"
        self.progress(f"mesh-cert for {client.ref}: the cluster's CA issues {want} to pod {namespace}/{name}")
        self.kube.apply(pod)
        found: dict[str, bytes] = {}
        try:
            def check() -> str:
                for file in ("cert-chain.pem", "key.pem"):
                    result = self.kube.exec(namespace, name, "reader", ["cat", f"{OUTPUT_CERTS}/{file}"], timeout=20)
                    if not result.ok or not result.stdout.strip():
                        return f"{file} not written yet ({result.describe() if not result.ok else 'empty'})"
                    found[file] = result.stdout
                return ""

            pending = poll(check, self.timeout, 1.0)
        finally:
            self.kube.delete("v1", "Pod", namespace, name)
        if pending:
            raise BackendError(f"the sidecar of pod {namespace}/{name} wrote no workload certificate within "
                               f"{self.timeout:.0f}s (--istio-timeout): {pending}")
        got = spiffe_of(found["cert-chain.pem"])
        if got != want:
            raise BackendError(f"the cluster's CA issued {got or 'no SPIFFE identity'} to {namespace}/{name}, "
                               f"not {want}")
        return found["cert-chain.pem"], found["key.pem"]
