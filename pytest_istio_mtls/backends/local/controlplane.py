"""Real Istio for the local backend: etcd, kube-apiserver and istiod inside the run's hub namespace.

The hub namespace is the run's "cluster network": the pods' bridge lives there, so every pilot-agent
reaches istiod at the bridge address exactly as a pod reaches ``istiod.istio-system.svc``, and two
runs (pytest-xdist workers) never compete for a port. The plugin reaches the API server through a
loopback relay (``relay.py``) and then speaks to it with the same Kubernetes client code as the
kind and existing backends. istiod runs with Istio's own switches for upstream Envoy builds
(``PILOT_ENABLE_ALPN_FILTER=false``, ``PILOT_ENABLE_METADATA_EXCHANGE=false``, no metrics provider),
and signs workload certificates with the run's CA (plugged in through ``ROOT_CA_DIR``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ...build.istio import IstioBuild
from ...judge.accesslog import FORMAT
from ...model import MeshSettings
from ..base import BackendError
from ..kube.client import Kube
from ..kube.propagation import parse_configz, poll
from . import prober
from .relay import Relay

ETCD_CLIENT = ("127.0.0.1", 2379)
APISERVER_PORT = 6443
ISTIOD_DEBUG = ("127.0.0.1", 8080)
ISTIOD_XDS_PORT = 15012
SERVICE_CIDR = "10.96.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
ISTIO_NAMESPACE = "istio-system"
ISTIOD_SAN = "istiod.istio-system.svc"
NODE = "pytest-istio-mtls-node"

Spawn = Callable[[list[str], Path, Mapping[str, str]], "subprocess.Popen[bytes]"]


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False, server: bool = False,
          sans: list[x509.GeneralName] | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer.subject if issuer is not None else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        usage = [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


class ClusterCertificates:
    """The API server's PKI: a cluster CA, the serving certificate, an admin client certificate
    (group system:masters) and the service-account signing key pair. Separate from the mesh CA."""

    def __init__(self, directory: Path, hub_ip: str) -> None:
        import ipaddress

        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)  # the API server's keys and the service-account signing key: root only
        self.directory = directory
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pytest-istio-mtls cluster CA")]), ca_key,
                   None, ca_key, ca=True)
        serving_key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in (
            "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", hub_ip, "10.96.0.1")]
        serving = _cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]), serving_key, ca,
                        ca_key, server=True, sans=sans)
        admin_key = ec.generate_private_key(ec.SECP256R1())
        admin = _cert(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, "pytest-istio-mtls")]), admin_key, ca, ca_key)
        sa_key = ec.generate_private_key(ec.SECP256R1())
        self.ca = self._write("ca.crt", ca.public_bytes(serialization.Encoding.PEM))
        self.serving_cert = self._write("apiserver.crt", serving.public_bytes(serialization.Encoding.PEM))
        self.serving_key = self._write("apiserver.key", _pem_key(serving_key))
        self.admin_cert = self._write("admin.crt", admin.public_bytes(serialization.Encoding.PEM))
        self.admin_key = self._write("admin.key", _pem_key(admin_key))
        self.sa_key = self._write("sa.key", _pem_key(sa_key))
        self.sa_pub = self._write("sa.pub", sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    def _write(self, name: str, data: bytes) -> Path:
        path = self.directory / name
        path.touch(mode=0o600)
        path.write_bytes(data)
        return path

    def kubeconfig(self, server: str, path: Path) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "local",
            "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority": str(self.ca)}}],
            "users": [{"name": "admin", "user": {"client-certificate": str(self.admin_cert),
                                                 "client-key": str(self.admin_key)}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
        }), encoding="utf-8")
        path.chmod(0o600)
        return path


def mesh_config(mesh: MeshSettings, istiod: str) -> dict[str, Any]:
    """istiod's meshConfig: the scenario's settings and the evidence's access-log format, no telemetry."""
    return {
        "enableAutoMtls": mesh.auto_mtls, "rootNamespace": mesh.root_namespace, "trustDomain": mesh.trust_domain,
        "accessLogFile": "/dev/stdout", "accessLogEncoding": "JSON",
        "accessLogFormat": json.dumps(FORMAT, sort_keys=True),
        # No defaultProviders.metrics: Istio's stats filter exists only in istio-proxy builds.
        # istiod names its serving certificate after this address (the agents dial the hub IP); the agents'
        # own proxy config comes from agent.py, as there is no injector.
        "defaultConfig": {"discoveryAddress": f"{istiod}:{ISTIOD_XDS_PORT}"},
    }


class ControlPlane:
    """One run's etcd, kube-apiserver and istiod, started in order, each waited for with a deadline."""

    def __init__(self, build: IstioBuild, directory: Path, hub: str, hub_ip: str, spawn: Spawn,
                 progress: Callable[[str], None], timeout: float) -> None:
        self.build = build
        self.directory = directory
        self.hub = hub
        self.hub_ip = hub_ip
        self.spawn = spawn
        self.progress = progress
        self.timeout = timeout
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.relay: Relay | None = None
        self.kube: Kube | None = None
        self.certs: ClusterCertificates | None = None
        self.kubeconfig_path: Path | None = None
        self.kubernetes_version = ""

    # -- lifecycle ----------------------------------------------------------------------------------------

    def start(self, mesh: MeshSettings, ca_directory: Path) -> Kube:
        started = time.monotonic()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)  # etcd's data, the API server's PKI, istiod's files: root only
        self.certs = ClusterCertificates(self.directory / "pki", self.hub_ip)
        self._start_etcd()
        self._start_apiserver()
        kube = self.kube
        assert kube is not None
        self._install_crds(kube)
        kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ISTIO_NAMESPACE}})
        kube.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE, "labels": {
            "kubernetes.io/hostname": NODE}}})
        self._start_istiod(mesh, ca_directory)
        self.progress(f"control plane up in {time.monotonic() - started:.1f}s: etcd, kube-apiserver "
                      f"{self.kubernetes_version}, istiod {self.build.version}")
        return kube

    def _log(self, name: str) -> Path:
        return self.directory / f"{name}.log"

    def _tail(self, name: str) -> str:
        try:
            return " | ".join(self._log(name).read_text(errors="replace").strip().splitlines()[-4:])
        except OSError:
            return ""

    def _wait(self, name: str, ready: Callable[[], str]) -> None:
        """Poll ``ready`` ('' when ready, else what is pending) until the deadline; a dead process fails now."""
        def check() -> str:
            process = self.processes[name]
            if process.poll() is not None:
                raise BackendError(f"{name} exited with code {process.returncode}: {self._tail(name)}")
            return ready()

        pending = poll(check, self.timeout, 0.1)
        if pending:
            raise BackendError(f"{name} was not ready after {self.timeout:.0f}s ({pending}); its log: "
                               f"{self._log(name)}")

    def _start_etcd(self) -> None:
        data = self.directory / "etcd"
        client = f"http://{ETCD_CLIENT[0]}:{ETCD_CLIENT[1]}"
        self.processes["etcd"] = self.spawn([
            str(self.build.etcd), "--name", "local", "--data-dir", str(data),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
            "--initial-cluster", "local=http://127.0.0.1:2380", "--log-level", "warn",
            "--unsafe-no-fsync",  # tmpfs, throwaway: durability buys nothing here
        ], self._log("etcd"), {})

        def healthy() -> str:
            try:
                return "" if '"true"' in prober.admin(self.hub, "/health", 1.0, ETCD_CLIENT) else "unhealthy"
            except OSError as exc:
                return str(exc) or "not answering"

        self._wait("etcd", healthy)

    def _start_apiserver(self) -> None:
        certs = self.certs
        assert certs is not None
        self.processes["kube-apiserver"] = self.spawn([
            str(self.build.kube_apiserver),
            f"--etcd-servers=http://{ETCD_CLIENT[0]}:{ETCD_CLIENT[1]}",
            # The hub's loopback only, nobody anonymous: pods never need the API server (their pilot-agents talk
            # to istiod), and the plugin reaches it through its relay with the admin certificate.
            "--bind-address=127.0.0.1", "--anonymous-auth=false", f"--secure-port={APISERVER_PORT}",
            f"--advertise-address={self.hub_ip}",
            f"--tls-cert-file={certs.serving_cert}", f"--tls-private-key-file={certs.serving_key}",
            f"--client-ca-file={certs.ca}", "--authorization-mode=Node,RBAC",
            f"--service-account-issuer={SA_ISSUER}", f"--service-account-key-file={certs.sa_pub}",
            f"--service-account-signing-key-file={certs.sa_key}", f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--cert-dir={self.directory / 'apiserver-certs'}", "--profiling=false", "--v=0",
            # What this single-node, kubelet-less cluster needs, and nothing that would spend the two cores.
            "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,MutatingAdmissionWebhook,"
            "ValidatingAdmissionWebhook",
            "--disable-admission-plugins=LimitRanger,TaintNodesByCondition,PodSecurity,Priority,"
            "DefaultTolerationSeconds,DefaultStorageClass,StorageObjectInUseProtection,PodGroupProtection,"
            "PersistentVolumeClaimResize,RuntimeClass,CertificateApproval,CertificateSigning,ClusterTrustBundleAttest,"
            "CertificateSubjectRestriction,DefaultIngressClass,PodTopologyLabels,PodGroupWorkloadExists,"
            "NodeDeclaredFeatureValidator,JobValidation,PodResizeValidator,MutatingAdmissionPolicy,"
            "ValidatingAdmissionPolicy,ResourceQuota",
            "--enable-priority-and-fairness=false",
        ], self._log("kube-apiserver"), {})
        self.relay = Relay(self.hub, ("127.0.0.1", APISERVER_PORT))
        self.kubeconfig_path = certs.kubeconfig(f"https://127.0.0.1:{self.relay.port}",
                                                self.directory / "kubeconfig")
        kube = Kube(self.kubeconfig_path, request_timeout=10.0)

        def ready() -> str:
            try:
                self.kubernetes_version = kube.server_version()
                kube.get("v1", "Namespace", None, "default")
            except BackendError as exc:
                return str(exc)
            return ""

        self._wait("kube-apiserver", ready)
        self.kube = kube

    def _install_crds(self, kube: Kube) -> None:
        documents = [d for d in yaml.safe_load_all(self.build.crds.read_text(encoding="utf-8"))
                     if isinstance(d, dict) and d.get("kind") == "CustomResourceDefinition"]
        for crd in documents:
            kube.apply(crd)

        def established() -> str:
            waiting = []
            for crd in documents:
                name = crd["metadata"]["name"]
                current = kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, name) or {}
                conditions = (current.get("status") or {}).get("conditions") or []
                if not any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
                    waiting.append(name)
            return f"CRDs not established: {', '.join(waiting[:3])}" if waiting else ""

        self._wait("kube-apiserver", established)

    def _write_mesh(self, mesh: MeshSettings) -> Path:
        mesh_file = self.directory / "mesh.yaml"
        temporary = mesh_file.with_suffix(".tmp")
        temporary.write_text(yaml.safe_dump(mesh_config(mesh, self.hub_ip), sort_keys=False), encoding="utf-8")
        os.replace(temporary, mesh_file)  # istiod watches the file: it must never see half of it
        return mesh_file

    def set_mesh(self, mesh: MeshSettings) -> None:
        """Change the scenario-controlled meshConfig live, as a ConfigMap edit would; wait until istiod uses it."""
        self._write_mesh(mesh)
        keys = ("enableAutoMtls", "rootNamespace", "trustDomain")
        wanted = {k: v for k, v in mesh_config(mesh, self.hub_ip).items() if k in keys}

        def applied() -> str:
            try:
                active = yaml.safe_load(prober.admin(self.hub, "/debug/mesh", 2.0, ISTIOD_DEBUG)) or {}
            except (OSError, yaml.YAMLError) as exc:
                return str(exc)
            differs = {k: active.get(k) for k, v in wanted.items() if active.get(k, True if k == "enableAutoMtls"
                                                                                 else None) != v}
            return f"istiod still uses {differs}" if differs else ""

        self._wait("istiod", applied)

    def _start_istiod(self, mesh: MeshSettings, ca_directory: Path) -> None:
        assert self.certs is not None
        mesh_file = self._write_mesh(mesh)
        # istiod lives in the hub: it reaches the API server directly, not through the plugin's relay.
        kubeconfig = self.certs.kubeconfig(f"https://127.0.0.1:{APISERVER_PORT}", self.directory / "istiod.kubeconfig")
        env = {
            "POD_NAMESPACE": ISTIO_NAMESPACE, "POD_NAME": "istiod-local", "REVISION": "default",
            "ROOT_CA_DIR": str(ca_directory),
            # Istio's switches for envoyproxy/envoy builds without Istio's filters (istio/istio#37950).
            "PILOT_ENABLE_ALPN_FILTER": "false", "PILOT_ENABLE_METADATA_EXCHANGE": "false",
            "ENABLE_LEADER_ELECTION": "false", "INJECT_ENABLED": "false", "VALIDATION_WEBHOOK_CONFIG_NAME": "",
            "CLUSTER_ID": "Kubernetes",
            # The Gateway API CRDs are not installed: istiod would wait for their informers forever.
            "PILOT_ENABLE_GATEWAY_API": "false",
        }
        self.processes["istiod"] = self.spawn([
            str(self.build.pilot_discovery), "discovery", f"--kubeconfig={kubeconfig}",
            f"--meshConfig={mesh_file}", f"--httpAddr={ISTIOD_DEBUG[0]}:{ISTIOD_DEBUG[1]}",
            # Pods reach only the mTLS xDS port (and the CA on it); plaintext xDS and the webhook port stay on the
            # hub's loopback (docs/real-istio.md: what a run exposes, to whom).
            "--grpcAddr=127.0.0.1:15010", f"--secureGRPCAddr=:{ISTIOD_XDS_PORT}", "--monitoringAddr=127.0.0.1:15014",
            "--httpsAddr=127.0.0.1:15017", "--domain=cluster.local", "--clusterID=Kubernetes",
            "--log_output_level=default:info",
        ], self._log("istiod"), env)

        def ready() -> str:
            try:
                prober.admin(self.hub, "/ready", 1.0, ISTIOD_DEBUG)
            except OSError as exc:
                return str(exc) or "not answering"
            return ""

        self._wait("istiod", ready)

    # -- istiod's view ------------------------------------------------------------------------------------

    def configz(self) -> dict[tuple[str, str, str], str]:
        """The Istio configs istiod holds: (kind, namespace, name) → resourceVersion."""
        return parse_configz(prober.admin(self.hub, "/debug/configz", 5.0, ISTIOD_DEBUG))

    def syncz(self) -> list[dict[str, Any]]:
        """Per connected proxy: what istiod sent and what the proxy acknowledged (or rejected)."""
        data = json.loads(prober.admin(self.hub, "/debug/syncz", 5.0, ISTIOD_DEBUG) or "[]")
        return list(data) if isinstance(data, list) else []

    def stop(self) -> None:
        """Only the relay is ours to close: the processes are the run's and are stopped by its teardown."""
        if self.relay is not None:
            self.relay.close()
            self.relay = None
