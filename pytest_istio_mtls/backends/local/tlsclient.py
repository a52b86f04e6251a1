"""Credentials of a client without a sidecar that speaks TLS itself (a probe's ``tls:``).

``no-cert`` presents nothing; ``foreign-cert`` a certificate shaped like a workload's (same SPIFFE URI) but
signed by a CA the mesh does not trust; ``mesh-cert`` a certificate the mesh CA signed for the client's
own service account, as a stolen workload key would give. Each is issued once per run and service account.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from ...model import ClientTls, Port, Workload
from ..certs import CertificateAuthority
from .prober import tls_context


class ClientCredentials:
    def __init__(self, mesh: CertificateAuthority, directory: Path) -> None:
        self.mesh = mesh
        self.directory = directory
        self._foreign: CertificateAuthority | None = None
        self._issued: dict[tuple[ClientTls, str, str], tuple[Path, Path]] = {}

    def context(self, client: Workload, port: Port, tls: ClientTls) -> ssl.SSLContext:
        """The client's TLS: ALPN http/1.1 on http ports (what curl offers over HTTP/1.1), none on tcp."""
        return tls_context(["http/1.1"] if port.protocol == "http" else [], self._credentials(client, tls))

    def _credentials(self, client: Workload, tls: ClientTls) -> tuple[Path, Path] | None:
        if tls == "no-cert":
            return None
        key = (tls, client.namespace, client.service_account)
        if key not in self._issued:
            self._issued[key] = self._authority(tls).issue(client.namespace, client.service_account, 0)
        return self._issued[key]

    def _authority(self, tls: ClientTls) -> CertificateAuthority:
        if tls == "mesh-cert":
            return self.mesh
        if self._foreign is None:
            self._foreign = CertificateAuthority(self.directory / "foreign-ca", self.mesh.trust_domain)
        return self._foreign
