"""The Kubernetes API as the backends use it: plain dicts in and out, errors as one-line BackendErrors.

Built from an explicit kubeconfig path and context into a private ``ApiClient``; the process-wide
default configuration is never touched. ``KubeApi`` is the interface the rest of the package uses,
so tests drive everything with replays of real API objects instead of a cluster.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from ..base import BackendError
from .manifests import FIELD_MANAGER

APPLY = "application/apply-patch+yaml"
# kind → (api attribute, method suffix, namespaced) for the built-in kinds; everything else is a custom object.
BUILTIN: dict[str, tuple[str, str, bool]] = {
    "Namespace": ("core", "namespace", False),
    "Node": ("core", "node", False),
    "ServiceAccount": ("core", "namespaced_service_account", True),
    "Service": ("core", "namespaced_service", True),
    "ConfigMap": ("core", "namespaced_config_map", True),
    "Pod": ("core", "namespaced_pod", True),
    "Event": ("core", "namespaced_event", True),
    "Deployment": ("apps", "namespaced_deployment", True),
    "StatefulSet": ("apps", "namespaced_stateful_set", True),  # read by `pytest-istio-mtls import`
    "DaemonSet": ("apps", "namespaced_daemon_set", True),
    "MutatingWebhookConfiguration": ("admission", "mutating_webhook_configuration", False),
    "EndpointSlice": ("discovery", "namespaced_endpoint_slice", True),
    "CustomResourceDefinition": ("extensions", "custom_resource_definition", False),
}
PLURALS: dict[str, str] = {
    "PeerAuthentication": "peerauthentications", "AuthorizationPolicy": "authorizationpolicies",
    "RequestAuthentication": "requestauthentications", "DestinationRule": "destinationrules",
    "VirtualService": "virtualservices", "Gateway": "gateways", "ServiceEntry": "serviceentries",
    "Sidecar": "sidecars", "WorkloadEntry": "workloadentries", "WorkloadGroup": "workloadgroups",
    "EnvoyFilter": "envoyfilters", "ProxyConfig": "proxyconfigs", "Telemetry": "telemetries",
}


class KubeError(BackendError):
    """An API call failed; ``status`` is the HTTP status (0 when there was no response)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class KubeconfigError(BackendError):
    """A kubeconfig that cannot be used, before any API call: ``problem`` names the file and what is wrong with it,
    ``fix`` what to do; ``str()`` is both on one line. Callers with a fix of their own can print these apart."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}; fix: {fix}")
        self.problem = problem
        self.fix = fix


@dataclass
class ExecResult:
    stdout: bytes = b""
    stderr: str = ""
    returncode: int | None = None  # None: the command did not run to completion (see error)
    error: str = ""  # the exec itself failed (pod/container missing, timeout, stream broken)

    @property
    def ok(self) -> bool:
        return not self.error and self.returncode == 0

    def describe(self) -> str:
        if self.error:
            return self.error
        detail = self.stderr.strip().splitlines()[-1:] if self.stderr.strip() else []
        return f"exit code {self.returncode}" + (f": {detail[0]}" if detail else "")


class ExecStream(Protocol):
    """A running exec whose stdout arrives as bytes (tcpdump's pcap output)."""

    def pump(self, timeout: float) -> tuple[bytes, bytes]: ...

    def write_stdin(self, data: bytes) -> None: ...

    def is_open(self) -> bool: ...

    def close(self) -> None: ...


class KubeApi(Protocol):
    def apply(self, obj: dict[str, Any]) -> dict[str, Any]: ...

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None: ...

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             label_selector: str = "") -> list[dict[str, Any]]: ...

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool: ...

    def patch(self, api_version: str, kind: str, namespace: str | None, name: str,
              body: dict[str, Any]) -> dict[str, Any]: ...

    def exec(self, namespace: str, pod: str, container: str, command: Sequence[str],
             timeout: float = 60.0, stdin: bytes | None = None) -> ExecResult: ...

    def exec_stream(self, namespace: str, pod: str, container: str, command: Sequence[str]) -> ExecStream: ...

    def logs(self, namespace: str, pod: str, container: str, since_seconds: int | None = None,
             tail_lines: int | None = None) -> str: ...

    def server_version(self) -> str: ...


def _message(exc: Exception) -> tuple[str, int]:
    status = int(getattr(exc, "status", 0) or 0)
    body = getattr(exc, "body", None)
    try:
        text = json.loads(body).get("message", "") if body else ""
    except (ValueError, AttributeError):
        text = ""
    return (text or str(getattr(exc, "reason", "")) or str(exc)).strip().splitlines()[0], status


def _upgrade_refusal(exc: BaseException) -> tuple[str, int]:
    """The API server's own words when it refuses an exec before any stream exists (a missing pod or
    container is an HTTP 4xx on the WebSocket upgrade, not a status on channel 3).

    The client wraps the handshake error in an ApiException whose reason holds the response as
    ``Handshake status 400 Bad Request -+-+- {headers} -+-+- {Status JSON}``, and in kubernetes 36
    then fails on its own ``e.body.decode`` (AttributeError), so the chain is searched.
    """
    seen: BaseException | None = exc
    while seen is not None:
        text = str(getattr(seen, "reason", "") or seen)
        match = re.match(r"Handshake status (\d+)", text)
        if match:
            body = text.rpartition(" -+-+- ")[2]
            try:
                message = str(json.loads(body).get("message") or "")
            except (ValueError, AttributeError):
                message = ""
            return message or text.partition(" -+-+- ")[0], int(match[1])
        if getattr(seen, "status", 0) and not isinstance(seen, AttributeError):
            return _message(seen) if isinstance(seen, Exception) else (str(seen), 0)
        seen = seen.__context__
    return f"{type(exc).__name__}: {exc}", 0


def parse_exec_status(raw: str) -> tuple[int | None, str]:
    """The exec status on channel 3: (exit code, error). Success → (0, ''), a non-zero exit → (n, ''),
    a failure to run the command at all → (None, message)."""
    if not raw.strip():
        return None, "the exec ended without a status"
    try:
        status = json.loads(raw)
    except ValueError:
        return None, raw.strip()
    if status.get("status") == "Success":
        return 0, ""
    if status.get("reason") == "NonZeroExitCode":
        for cause in (status.get("details") or {}).get("causes") or []:
            if cause.get("reason") == "ExitCode":
                return int(cause.get("message", "1")), ""
    return None, str(status.get("message") or raw).strip()


KUBECONFIG_SHAPE = "YAML mapping with clusters, contexts, users expected"
KUBECONFIG_LISTS = ("clusters", "contexts", "users")
VIEW_HINT = "(`kubectl config view --raw` prints the one kubectl uses)"


def kubeconfig_files(kubeconfig: Path | str | None, option: str = "--istio-kubeconfig") -> list[Path]:
    """The kubeconfig files to merge, as kubectl picks them (``$KUBECONFIG`` read now, not when the client library
    was imported), each checked to be a kubeconfig. The client library would report a missing file as "No
    configuration found." and a file of text as "'str' object does not support item assignment": a KubeconfigError
    names the file, what is wrong with it and the fix instead."""
    env = os.environ.get("KUBECONFIG", "")
    if kubeconfig:
        listed, origin = str(kubeconfig), "argument"
    elif env:
        listed, origin = env, "KUBECONFIG"
    else:
        listed, origin = "~/.kube/config", "default"
    paths = [Path(entry).expanduser() for entry in listed.split(os.pathsep) if entry]
    files = [path for path in paths if path.exists()]
    if not files:
        where = " or ".join(map(str, paths))
        if origin == "argument":
            raise KubeconfigError(f"no kubeconfig at {where}: no such file", f"check the path given to {option}")
        if origin == "KUBECONFIG":
            raise KubeconfigError(f"no kubeconfig at {where} (KUBECONFIG={env})",
                                  f"point KUBECONFIG at an existing file, or pass {option} FILE")
        raise KubeconfigError(f"no kubeconfig at {where} (KUBECONFIG unset)", f"pass {option} FILE or set KUBECONFIG")
    point = {"argument": option, "KUBECONFIG": "KUBECONFIG"}.get(origin, f"{option} or KUBECONFIG")
    for path in files:
        problem = _not_a_kubeconfig(path)
        if problem:
            raise KubeconfigError(problem, f"point {point} at your cluster's kubeconfig {VIEW_HINT}")
    return files


def _not_a_kubeconfig(path: Path) -> str:
    """What makes ``path`` unusable as a kubeconfig, for people ('' when it looks like one)."""
    if path.is_dir():
        return f"{path} is a directory, not a kubeconfig file"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return f"cannot read the kubeconfig {path}: {exc.strerror or exc}"
    except UnicodeDecodeError:
        return f"{path} is not a kubeconfig ({KUBECONFIG_SHAPE}): it is not text"
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        return f"{path} is not a kubeconfig ({KUBECONFIG_SHAPE}): not YAML ({at}{getattr(exc, 'problem', '') or exc})"
    what = ""
    if data is None:
        what = "it is empty"
    elif isinstance(data, str):
        what = f"it holds the text {data[:40] + '…' if len(data) > 40 else data!r}"
    elif not isinstance(data, dict):
        what = f"it holds {_a(data)}"
    elif not data:
        what = "it is an empty mapping"
    elif not any(key in data for key in (*KUBECONFIG_LISTS, "current-context")):
        what = f"it has none of {', '.join(KUBECONFIG_LISTS)} (its keys: {', '.join(map(str, list(data)[:5]))})"
    else:
        for key in KUBECONFIG_LISTS:
            entries = data.get(key)
            if entries is None:
                continue
            if not isinstance(entries, list):
                what = f"{key} is {_a(entries)}, not a list of named entries"
                break
            wrong = next((n for n, e in enumerate(entries, 1) if not isinstance(e, dict) or "name" not in e), None)
            if wrong is not None:
                what = f"{key} entry {wrong} is not a mapping with a name"
                break
    return f"{path} is not a kubeconfig ({KUBECONFIG_SHAPE}): {what}" if what else ""


def _a(value: object) -> str:
    """``a list``, ``a string``: a YAML value's kind, for people."""
    names = {str: "a string", list: "a list", dict: "a mapping", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), f"a {type(value).__name__}")


class _WebSocketStream:
    def __init__(self, ws: Any) -> None:
        self._ws = ws

    def pump(self, timeout: float) -> tuple[bytes, bytes]:
        if self._ws.is_open():
            self._ws.update(timeout=timeout)
        return bytes(self._ws.read_channel(1) or b""), bytes(self._ws.read_channel(2) or b"")

    def write_stdin(self, data: bytes) -> None:
        self._ws.write_stdin(data)

    def is_open(self) -> bool:
        return bool(self._ws.is_open())

    def close(self) -> None:
        self._ws.close()


class Kube:
    """``KubeApi`` on the official client (kubernetes < 37)."""

    def __init__(self, kubeconfig: Path | str | None, context: str | None = None,
                 request_timeout: float = 30.0, *, option: str = "--istio-kubeconfig") -> None:
        """``kubeconfig=None``: ``$KUBECONFIG`` (a path list is merged) else ``~/.kube/config``. ``option`` is
        the caller's flag for a kubeconfig, named in the fix of a kubeconfig that cannot be used."""
        from kubernetes import client, config

        files = kubeconfig_files(kubeconfig, option)
        try:
            self.api = config.new_client_from_config(config_file=os.pathsep.join(map(str, files)),
                                                     context=context, persist_config=False)
        except (config.ConfigException, OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            where = " and ".join(map(str, files))
            raise BackendError(f"cannot use {where}" + (f" (context {context})" if context else "")
                               + f": {exc}") from None
        # Reached through ``getattr(self, BUILTIN[kind][0])``: every API named in BUILTIN must exist here.
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.admission = client.AdmissionregistrationV1Api(self.api)
        self.discovery = client.DiscoveryV1Api(self.api)
        self.extensions = client.ApiextensionsV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.timeout = request_timeout
        self._stream_lock = threading.Lock()  # stream() swaps ApiClient.request while it connects

    # -- objects ------------------------------------------------------------------------------------------

    def _call(self, what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.rest import ApiException

        try:
            return function(*args, _request_timeout=self.timeout, **kwargs)
        except ApiException as exc:
            message, status = _message(exc)
            raise KubeError(f"{what}: {message}", status) from None
        except Exception as exc:  # urllib3 connection errors and friends: one line, no traceback
            raise KubeError(f"{what}: {type(exc).__name__}: {exc}") from None

    def _dict(self, obj: Any) -> dict[str, Any]:
        data = obj if isinstance(obj, dict) else self.api.sanitize_for_serialization(obj)
        return data if isinstance(data, dict) else {}

    def _builtin(self, kind: str) -> tuple[Any, str, bool] | None:
        entry = BUILTIN.get(kind)
        if entry is None:
            return None
        api_name, suffix, namespaced = entry
        return getattr(self, api_name), suffix, namespaced

    @staticmethod
    def _custom(api_version: str, kind: str) -> tuple[str, str, str]:
        group, _, version = api_version.partition("/")
        plural = PLURALS.get(kind)
        if plural is None or not version:
            raise KubeError(f"do not know how to address {api_version} {kind}")
        return group, version, plural

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply with our field manager, taking ownership of conflicting fields."""
        kind, metadata = str(obj.get("kind")), obj.get("metadata") or {}
        name, namespace = str(metadata.get("name")), metadata.get("namespace")
        what = f"apply {kind} {namespace + '/' if namespace else ''}{name}"
        options = {"field_manager": FIELD_MANAGER, "force": True, "_content_type": APPLY}
        builtin = self._builtin(kind)
        if builtin is not None:
            api, suffix, namespaced = builtin
            args = (name, namespace, obj) if namespaced else (name, obj)
            return self._dict(self._call(what, getattr(api, f"patch_{suffix}"), *args, **options))
        group, version, plural = self._custom(str(obj.get("apiVersion")), kind)
        # Raw body: the generated custom-object methods know only a 200 response and return None for the
        # 201 that a server-side apply which creates the object answers (its creationTimestamp matters).
        options["_preload_content"] = False
        if namespace:
            response = self._call(what, self.custom.patch_namespaced_custom_object, group, version, namespace,
                                  plural, name, obj, **options)
        else:
            response = self._call(what, self.custom.patch_cluster_custom_object, group, version, plural, name, obj,
                                  **options)
        try:
            return self._dict(json.loads(response.data))
        except (ValueError, AttributeError) as exc:
            raise KubeError(f"{what}: the server's answer is not an object: {exc}") from None

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        what = f"get {kind} {namespace + '/' if namespace else ''}{name}"
        try:
            builtin = self._builtin(kind)
            if builtin is not None:
                api, suffix, namespaced = builtin
                args = (name, namespace) if namespaced else (name,)
                return self._dict(self._call(what, getattr(api, f"read_{suffix}"), *args))
            group, version, plural = self._custom(api_version, kind)
            if namespace:
                return self._dict(self._call(what, self.custom.get_namespaced_custom_object, group, version,
                                             namespace, plural, name))
            return self._dict(self._call(what, self.custom.get_cluster_custom_object, group, version, plural, name))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             label_selector: str = "") -> list[dict[str, Any]]:
        what = f"list {kind}" + (f" in {namespace}" if namespace else "")
        builtin = self._builtin(kind)
        if builtin is not None:
            api, suffix, namespaced = builtin
            if namespaced and namespace:
                result = self._call(what, getattr(api, f"list_{suffix}"), namespace, label_selector=label_selector)
            elif namespaced:
                plain = suffix.removeprefix("namespaced_")
                result = self._call(what, getattr(api, f"list_{plain}_for_all_namespaces"),
                                    label_selector=label_selector)
            else:
                result = self._call(what, getattr(api, f"list_{suffix}"), label_selector=label_selector)
            return list(self._dict(result).get("items") or [])
        group, version, plural = self._custom(api_version, kind)
        if namespace:
            data = self._call(what, self.custom.list_namespaced_custom_object, group, version, namespace, plural,
                              label_selector=label_selector)
        else:
            data = self._call(what, self.custom.list_cluster_custom_object, group, version, plural,
                              label_selector=label_selector)
        return list(self._dict(data).get("items") or [])

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str,
               grace_period_seconds: int | None = None) -> bool:
        """``grace_period_seconds=0``: gone at once, as a kubelet confirms a pod's end (the local control
        plane has no kubelet; a scheduled pod would otherwise stay terminating)."""
        what = f"delete {kind} {namespace + '/' if namespace else ''}{name}"
        try:
            builtin = self._builtin(kind)
            if builtin is not None:
                api, suffix, namespaced = builtin
                args = (name, namespace) if namespaced else (name,)
                extra = {} if grace_period_seconds is None else {"grace_period_seconds": grace_period_seconds}
                self._call(what, getattr(api, f"delete_{suffix}"), *args, propagation_policy="Background", **extra)
                return True
            group, version, plural = self._custom(api_version, kind)
            if namespace:
                self._call(what, self.custom.delete_namespaced_custom_object, group, version, namespace, plural, name)
            else:
                self._call(what, self.custom.delete_cluster_custom_object, group, version, plural, name)
            return True
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise

    def patch(self, api_version: str, kind: str, namespace: str | None, name: str,
              body: dict[str, Any]) -> dict[str, Any]:
        what = f"patch {kind} {namespace + '/' if namespace else ''}{name}"
        builtin = self._builtin(kind)
        if builtin is None:
            raise KubeError(f"{what}: only built-in kinds are patched")
        api, suffix, namespaced = builtin
        args = (name, namespace, body) if namespaced else (name, body)
        return self._dict(self._call(what, getattr(api, f"patch_{suffix}"), *args,
                                     _content_type="application/merge-patch+json"))

    def patch_pod_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch a Pod's status subresource: what a kubelet reports (the local control plane plays it)."""
        return self._dict(self._call(f"patch Pod {namespace}/{name} status", self.core.patch_namespaced_pod_status,
                                     name, namespace, {"status": status},
                                     _content_type="application/merge-patch+json"))

    def token(self, namespace: str, service_account: str, audience: str, seconds: int = 86400) -> str:
        """A bound service-account token from the TokenRequest API (what a kubelet mounts for a pod)."""
        from kubernetes import client

        body = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=[audience], expiration_seconds=seconds))
        result = self._call(f"token for ServiceAccount {namespace}/{service_account}",
                            self.core.create_namespaced_service_account_token, service_account, namespace, body)
        token = str(getattr(getattr(result, "status", None), "token", "") or "")
        if not token:
            raise KubeError(f"token for ServiceAccount {namespace}/{service_account}: the answer had no token")
        return token

    # -- pods ---------------------------------------------------------------------------------------------

    def _open(self, namespace: str, pod: str, container: str, command: Sequence[str], stdin: bool) -> Any:
        from kubernetes.stream import stream

        with self._stream_lock:
            try:
                return stream(self.core.connect_get_namespaced_pod_exec, pod, namespace, container=container,
                              command=list(command), stdin=stdin, stdout=True, stderr=True, tty=False,
                              _preload_content=False, binary=True)
            except Exception as exc:
                message, status = _upgrade_refusal(exc)
                raise KubeError(f"exec in {namespace}/{pod} ({container}): {message}", status) from None

    def exec(self, namespace: str, pod: str, container: str, command: Sequence[str],
             timeout: float = 60.0, stdin: bytes | None = None) -> ExecResult:
        """Run ``command`` to completion. ``stdin`` is written once (never closed: the v4 exec protocol cannot),
        so a command reading it must stop at a delimiter, not at end of input. Secrets go this way, never argv."""
        try:
            ws = self._open(namespace, pod, container, command, stdin=stdin is not None)
        except KubeError as exc:
            return ExecResult(error=str(exc))
        stdout, stderr = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        try:
            if stdin is not None:
                ws.write_stdin(stdin)
            while ws.is_open() and time.monotonic() < deadline:
                ws.update(timeout=min(1.0, max(deadline - time.monotonic(), 0.01)))
                stdout += ws.read_channel(1) or b""
                stderr += ws.read_channel(2) or b""
            stdout += ws.read_channel(1) or b""
            stderr += ws.read_channel(2) or b""
            if ws.is_open():
                return ExecResult(bytes(stdout), stderr.decode("utf-8", "replace"),
                                  error=f"exec in {namespace}/{pod} ({container}) did not finish within {timeout:.0f}s")
            raw = ws.read_channel(3) or b""
            code, error = parse_exec_status(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw))
        except Exception as exc:  # a broken websocket is an exec failure, reported, never raised
            return ExecResult(bytes(stdout), stderr.decode("utf-8", "replace"),
                              error=f"exec in {namespace}/{pod} ({container}) broke: {type(exc).__name__}: {exc}")
        finally:
            ws.close()
        if error:
            error = f"exec in {namespace}/{pod} ({container}): {error}"
        return ExecResult(bytes(stdout), stderr.decode("utf-8", "replace"), code, error)

    def exec_stream(self, namespace: str, pod: str, container: str, command: Sequence[str]) -> ExecStream:
        return _WebSocketStream(self._open(namespace, pod, container, command, stdin=True))

    def logs(self, namespace: str, pod: str, container: str, since_seconds: int | None = None,
             tail_lines: int | None = None) -> str:
        kwargs: dict[str, Any] = {"container": container, "_preload_content": False}
        if since_seconds is not None:
            kwargs["since_seconds"] = since_seconds
        if tail_lines is not None:
            kwargs["tail_lines"] = tail_lines
        # Raw bytes: the client would otherwise try to deserialize JSON log lines.
        response = self._call(f"logs of {namespace}/{pod} ({container})", self.core.read_namespaced_pod_log,
                              pod, namespace, **kwargs)
        data = getattr(response, "data", b"")
        return data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)

    def server_version(self) -> str:
        from kubernetes import client

        info = self._call("server version", client.VersionApi(self.api).get_code)
        return str(getattr(info, "git_version", "") or "")
