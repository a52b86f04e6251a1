"""A per-run certificate authority issuing Istio-shaped workload identities.

Like istiod's CA: an EC P-256 root for trust domain cluster.local, and per service account a
short-lived leaf with an empty subject and a critical URI SAN ``spiffe://cluster.local/ns/NS/sa/SA``.
The local backend plugs it into istiod and writes keys only into the run directory, which teardown
removes; the kind and existing backends issue ``foreign-cert`` clients' certificates from one in memory.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(hours=1)
# The root outlives every leaf istiod signs with it (24 h by default) and a kept run's inspection.
ROOT_VALIDITY = dt.timedelta(days=7)


class CertificateAuthority:
    def __init__(self, directory: Path | None, trust_domain: str = "cluster.local") -> None:
        self.directory = directory
        self.trust_domain = trust_domain
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain)])
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + ROOT_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.root_path = Path()
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o700)  # private; a caller opens it to the proxies' group where they read from it
            self.root_path = directory / "root-cert.pem"
            self.root_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def leaf(self, namespace: str, service_account: str) -> tuple[bytes, bytes]:
        """Certificate and private key (PEM) for one identity, in memory only."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        spiffe = f"spiffe://{self.trust_domain}/ns/{namespace}/sa/{service_account}"
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([])).issuer_name(self._cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe)]), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    def issue(self, namespace: str, service_account: str, owner_uid: int) -> tuple[Path, Path]:
        """Write cert-chain and key for one identity into the CA's directory, readable only by the proxy's uid."""
        if self.directory is None:
            raise ValueError("this certificate authority keeps nothing on disk")
        cert, key = self.leaf(namespace, service_account)
        stem = f"{namespace}.{service_account}"
        cert_path = self.directory / f"{stem}.cert.pem"
        key_path = self.directory / f"{stem}.key.pem"
        cert_path.write_bytes(cert)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key)
        os.chown(key_path, owner_uid, owner_uid)
        return cert_path, key_path

    def plug_into(self, directory: Path) -> Path:
        """Write this CA as istiod's plugged-in CA (``ROOT_CA_DIR``): istiod then signs workload certificates
        with it, so the run knows the root every identity chains to. The root signs directly here."""
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)  # istiod (root) reads the CA key here; nobody else may
        pem = self._cert.public_bytes(serialization.Encoding.PEM)
        for name in ("ca-cert.pem", "root-cert.pem", "cert-chain.pem"):
            (directory / name).write_bytes(pem)
        key_path = directory / "ca-key.pem"
        key_path.touch(mode=0o600)
        key_path.write_bytes(self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
        return directory
