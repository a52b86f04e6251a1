"""The local backend's pods: their network namespaces, iptables interception and DNAT, hosts files, the
processes in them (app, pilot-agent, Envoy), and each sidecar's configuration until it is in force."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from ...model import MeshSettings, Scenario, Topology, Workload
from ...model.diagnostics import plural
from ...options import Settings
from .. import echo, support
from ..base import BackendError, Progress
from ..certs import CertificateAuthority
from . import agent, envoy, prober, routing
from .capture import PacketCapture
from .controlplane import SERVICE_CIDR
from .istiod import IstiodMesh
from .state import PREFIX, RunState, processes_mentioning, stop_processes
from .system import iptables_backend, run
from .tlsclient import ClientCredentials

BRIDGE_IP = "10.244.0.1"
POD_NET = "10.244.0.{}"
SERVICE_NET = "10.96.0.{}"
ECHO_SCRIPT = Path(echo.__file__)


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



class LocalRun:
    """The state of one local run that the backend's parts share (assigned in ``LocalBackend.__init__``)."""

    settings: Settings
    progress: Progress
    state: RunState | None
    pods: dict[str, Pod]
    signature: tuple[Any, ...] | None
    scenario: Scenario | None
    hub: str
    capture: PacketCapture | None
    ca: CertificateAuthority | None
    envoy_path: str
    probe_timeout: float
    _stats: dict[str, dict[str, int]]
    _windows: dict[str, tuple[float, float]]  # probe marker → (sent, answered), epoch seconds
    _generation: int
    istiod: IstiodMesh | None
    credentials: ClientCredentials | None


class Pods(LocalRun):

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
            # The pod's istio-proxy filesystem (SDS socket, token, certificates) and logs: root and the proxy's
            # uid only. Istio makes the SDS socket 0666; this directory is what keeps other users from it.
            os.chown(directory, envoy.PROXY_UID, envoy.PROXY_UID)
            directory.chmod(0o700)
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
        stop_processes([p.pid for p in pids] + orphans, self.state.run_id, starts=self.state.starts)
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
        self.state.starts = {pid: start for pid, start in self.state.starts.items() if int(pid) in self.state.pids}
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



def _size(path: Path) -> int:
    """A log's size (0 before it exists): where the lines of what starts now begin."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0



def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")
