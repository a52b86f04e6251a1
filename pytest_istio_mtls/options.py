"""The plugin's options: one table, each with a command-line flag, an env-var twin and an ini key.

Precedence, highest first: command line, ``ISTIO_MTLS_*`` environment variable, ini file,
default. Values from the environment and ini are validated here too, because argparse only
checks the command line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

BACKENDS = ("kind", "existing", "local")
IMAGE_KEYS = ("app", "curl", "capture")  # the workload images (backends/kube/manifests.py DEFAULT_IMAGES)
CONTROL_PLANES = ("istiod", "emulated")
KEEP = ("never", "on-failure", "always")


@dataclass(frozen=True)
class Option:
    flag: str  # --istio-backend
    dest: str  # istio_backend (also the ini key)
    help: str
    default: Any = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    kind: str = "str"  # str | bool | paths

    @property
    def env(self) -> str:
        return "ISTIO_MTLS_" + self.dest.removeprefix("istio_").upper()


OPTIONS: tuple[Option, ...] = (
    Option("--istio-scenarios", "istio_scenarios",
           "collect scenario files as tests: files or directories, or 'builtin' for the library shipped with "
           "the plugin (default with no PATH: ini istio_scenarios, else <rootdir>/scenarios); alone it runs only "
           "scenarios. The ini key alone turns collection on beside the project's other tests, and so does a "
           "scenario file named as an argument",
           kind="paths", metavar="PATH"),
    Option("--istio-backend", "istio_backend",
           "where probes run: kind (create a kind cluster with real Istio), existing (a cluster from a "
           "kubeconfig that runs Istio), local (real Envoy sidecars in Linux network namespaces; needs root)",
           default="kind", choices=BACKENDS),
    Option("--istio-control-plane", "istio_control_plane",
           "local backend: istiod (real istiod, kube-apiserver and pilot-agent built by `pytest-istio-mtls "
           "build-istio` configure the Envoy sidecars) or emulated (the sidecars' configuration is derived from "
           "this plugin's model of Istio: faster, but it can only confirm that model)",
           default="istiod", choices=CONTROL_PLANES),
    Option("--istio-report", "istio_report",
           "write report.json, report.md and report.html into DIR", metavar="DIR"),
    Option("--istio-keep", "istio_keep",
           "keep what the run created (cluster, namespaces, network namespaces, proxies) for inspection: never, "
           "on-failure (when an item failed or errored: the first failing scenario's mesh is kept and later "
           "scenarios are skipped) or always (the last scenario's mesh); instructions are printed",
           default="never", choices=KEEP),
    Option("--istio-version", "istio_version",
           "kind backend: the Istio to install: an exact version (1.31.1), a minor (1.31: its newest patch) or "
           "'latest'", default="latest", metavar="VERSION"),
    Option("--istio-revision", "istio_revision",
           "install (kind) or use (existing) this Istio revision; namespaces get istio.io/rev=REVISION",
           metavar="REVISION"),
    Option("--istio-kubeconfig", "istio_kubeconfig",
           "existing backend: kubeconfig of the cluster (default: $KUBECONFIG, else ~/.kube/config)",
           metavar="FILE"),
    Option("--istio-context", "istio_context", "existing backend: kubeconfig context to use", metavar="NAME"),
    Option("--istio-allow-mesh-wide", "istio_allow_mesh_wide",
           "existing backend: allow scenarios to apply mesh-wide policies (root namespace) to a shared cluster",
           default=False, kind="bool"),
    Option("--istio-hub", "istio_hub",
           "kind backend: the registry istioctl pulls istiod and the sidecar image from (a mirror of "
           "docker.io/istio, e.g. myregistry.example.com/istio)", default="docker.io/istio", metavar="HUB"),
    Option("--istio-tag", "istio_tag",
           "kind backend: the tag of the pilot and proxyv2 images under --istio-hub (default: the Istio version), "
           "e.g. a build of your own", metavar="TAG"),
    Option("--istio-images", "istio_images",
           "override workload images for mirrored registries, comma-separated KEY=IMAGE with KEY one of "
           "app (any image with python3: it runs the plugin's echo app), curl, capture (tcpdump)",
           metavar="KEY=IMAGE,..."),
    Option("--istio-kind-cluster", "istio_kind_cluster",
           "kind backend: the kind cluster to create, or to reuse when it exists (a reused cluster is never deleted; "
           "pytest-kind's --cluster-name works too)", default="pytest-istio-mtls", metavar="NAME"),
    Option("--istio-kind-image", "istio_kind_image",
           "kind backend: the node image to create the cluster with (default: the kindest/node kind pairs with "
           "the Istio version; pytest-kind's --kind-image works too)", metavar="IMAGE"),
    Option("--istio-kind-config", "istio_kind_config",
           "kind backend: a kind cluster configuration file for creating the cluster (kind create cluster "
           "--config)", metavar="FILE"),
    Option("--istio-kind-bin", "istio_kind_bin",
           "kind backend: the kind binary to use instead of downloading the pinned release (pytest-kind's "
           "--kind-bin works too)", metavar="FILE"),
    Option("--istio-istioctl", "istio_istioctl",
           "kind backend: the istioctl binary to install Istio with instead of downloading the release of "
           "--istio-version; its version is the Istio version", metavar="FILE"),
    Option("--istio-timeout", "istio_timeout",
           "seconds to wait for one step (workloads ready, policy in force) before failing with what was still "
           "pending", default="120", metavar="SECONDS"),
    Option("--istio-update-expectations", "istio_update_expectations",
           "write the observed results of wrong rows into the scenario files (an explicit row's result and status; "
           "a derived row becomes a pin under expect: {derived: true, rows: [...]}), keeping comments and layout, "
           "and list each change as file:line; nothing is written when a row errored",
           default=False, kind="bool"),
)
BY_DEST = {o.dest: o for o in OPTIONS}
KIND_ONLY = ("istio_tag", "istio_kind_cluster", "istio_kind_image", "istio_kind_config", "istio_kind_bin",
             "istio_istioctl")


def register(parser: pytest.Parser) -> None:
    group = parser.getgroup("istio-mtls", "Istio mTLS scenarios (pytest-istio-mtls)")
    for option in OPTIONS:
        help_text = f"{option.help}. Env: {option.env}; ini: {option.dest}."
        if option.kind == "bool":
            group.addoption(option.flag, action="store_true", dest=option.dest, default=None, help=help_text)
            parser.addini(option.dest, option.help, type="bool", default=option.default)
        elif option.kind == "paths":
            group.addoption(option.flag, nargs="*", dest=option.dest, default=None, metavar=option.metavar,
                            help=help_text)
            parser.addini(option.dest, option.help, type="paths", default=[])
        else:
            group.addoption(option.flag, dest=option.dest, default=None, choices=option.choices,
                            metavar=option.metavar, help=help_text)
            parser.addini(option.dest, option.help, default=option.default)


@dataclass(frozen=True)
class Settings:
    """Resolved option values, handed to backends and reports."""

    scenarios: tuple[Path, ...] | None = None  # None: scenario collection is off
    scenarios_defaulted: bool = False  # no PATH given: <rootdir>/scenarios (or ini) was used
    scenarios_only: bool = False  # turned on by the flag or its env twin: without arguments, run only scenarios
    node_ids: tuple[str, ...] = ()  # `--istio-scenarios DIR FILE::ROW`: argparse gave the option a node id
    backend: str = "kind"
    control_plane: str = "istiod"
    report: Path | None = None
    keep: str = "never"
    istio_version: str = "latest"
    istio_revision: str | None = None
    kubeconfig: Path | None = None
    context: str | None = None
    allow_mesh_wide: bool = False
    hub: str = "docker.io/istio"
    tag: str | None = None  # pilot/proxyv2 image tag; None: the Istio version
    images: dict[str, str] = field(default_factory=dict)
    kind_cluster: str = "pytest-istio-mtls"
    kind_image: str | None = None
    kind_config: Path | None = None
    kind_bin: Path | None = None
    istioctl: Path | None = None
    timeout: float = 120.0
    update_expectations: bool = False
    rootdir: Path = Path(".")
    extra: dict[str, Any] = field(default_factory=dict)  # honoured options of other plugins (pytest-kind)


def _raw(config: pytest.Config, option: Option) -> tuple[Any, str]:
    """The value and where it came from (for error messages)."""
    value = config.getoption(option.dest, default=None)
    if value is not None:
        return value, option.flag
    if option.env in os.environ:
        env = os.environ[option.env]
        if option.kind == "bool":
            return env.strip().lower() in ("1", "true", "yes", "on"), option.env
        if option.kind == "paths":
            return [p for p in env.split(os.pathsep) if p], option.env
        return env, option.env
    value = config.getini(option.dest)
    return value, f"ini {option.dest}"


def builtin_scenarios() -> Path:
    return Path(__file__).parent / "scenarios"


def resolve(config: pytest.Config) -> Settings:
    """Read every option once, validate values and combinations; raise pytest.UsageError if wrong."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        value, source = _raw(config, option)
        if option.choices and value not in option.choices:
            raise pytest.UsageError(f"{source}: invalid value {value!r}; use one of {', '.join(option.choices)}")
        values[option.dest] = (value, source)

    rootdir = Path(config.rootpath)
    scenarios: tuple[Path, ...] | None = None
    raw_paths, source = values["istio_scenarios"]
    node_ids = tuple(str(p) for p in raw_paths if "::" in str(p))
    raw_paths = [p for p in raw_paths if "::" not in str(p)]
    scenarios_only = config.getoption("istio_scenarios") is not None or bool(
        os.environ.get(BY_DEST["istio_scenarios"].env))
    if scenarios_only or config.getini("istio_scenarios"):
        paths = [str(p) for p in raw_paths] or [str(p) for p in config.getini("istio_scenarios")]
        default = not paths
        if default:
            paths = [str(rootdir / "scenarios")]
        resolved = []
        for entry in paths:
            path = builtin_scenarios() if entry == "builtin" else Path(entry)
            if not path.is_absolute() and entry != "builtin":
                path = Path(config.invocation_params.dir) / path
            if not path.exists():
                if default and (config.args_source == pytest.Config.ArgsSource.ARGS or node_ids):
                    continue  # explicit paths on the command line say what to collect
                hint = " (or --istio-scenarios builtin for the library shipped with the plugin)" if default else ""
                raise pytest.UsageError(f"{source}: no such scenario file or directory: {entry}{hint}")
            resolved.append(path)
        scenarios = tuple(resolved)
    else:
        named = _scenario_arguments(config)
        scenarios = named or None

    timeout_value, timeout_source = values["istio_timeout"]
    try:
        timeout = float(timeout_value)
        if timeout <= 0:
            raise ValueError
    except (TypeError, ValueError):
        raise pytest.UsageError(f"{timeout_source}: timeout must be a positive number of seconds, "
                                f"not {timeout_value!r}") from None

    images: dict[str, str] = {}
    images_value, images_source = values["istio_images"]
    for item in str(images_value or "").split(","):
        if not item.strip():
            continue
        key, sep, image = item.partition("=")
        if key.strip() in ("httpbin", "tcp-echo"):
            raise pytest.UsageError(f"{images_source}: {key.strip()} is gone: every backend's workloads run the "
                                    "plugin's echo app; name an image with python3 as app=IMAGE")
        if not sep or key.strip() not in IMAGE_KEYS or not image.strip():
            raise pytest.UsageError(f"{images_source}: expected KEY=IMAGE with KEY one of {', '.join(IMAGE_KEYS)}; "
                                    f"got {item!r}")
        images[key.strip()] = image.strip()
    files: dict[str, Path | None] = {}
    for dest in ("istio_kind_config", "istio_kind_bin", "istio_istioctl"):
        value, where = values[dest]
        given: Path | None = Path(config.invocation_params.dir, str(value)).expanduser() if value else None
        if given is not None and values["istio_backend"][0] == "kind" and not given.is_file():
            raise pytest.UsageError(f"{where}: no such file: {value}")
        files[dest] = given

    backend = values["istio_backend"][0]
    kubeconfig = values["istio_kubeconfig"][0]
    context = values["istio_context"][0]
    allow_mesh_wide = bool(values["istio_allow_mesh_wide"][0])
    if backend != "kind":  # env twins are left alone: a harness may set them for the kind runs among others
        for dest in KIND_ONLY:
            value, where = values[dest]
            if value and where.startswith("--"):
                raise pytest.UsageError(f"{where} only applies to --istio-backend=kind (the backend is {backend})")
    if backend != "existing":
        for dest in ("istio_kubeconfig", "istio_context", "istio_allow_mesh_wide"):
            value, where = values[dest]
            if value and not where.startswith("ini"):
                raise pytest.UsageError(f"{where} only applies to --istio-backend=existing (the backend is "
                                        f"{backend})")
    if backend == "local":
        for dest in ("istio_revision", "istio_hub", "istio_images"):  # env twins alone, as for KIND_ONLY above
            value, where = values[dest]
            if value and value != BY_DEST[dest].default and where.startswith("--"):
                raise pytest.UsageError(f"{where} does not apply to --istio-backend=local (no images, no cluster)")
        value, where = values["istio_version"]
        if value and value != "latest" and values["istio_control_plane"][0] != "istiod" and \
                not where.startswith("ini"):
            raise pytest.UsageError(f"{where} needs --istio-control-plane=istiod (the emulated control plane runs "
                                    "no Istio)")
    else:
        value, where = values["istio_control_plane"]
        if value != "istiod" and where == BY_DEST["istio_control_plane"].flag:  # an env twin may serve other runs
            raise pytest.UsageError(f"{where} only applies to --istio-backend=local (the {backend} backend always "
                                    "runs real istiod)")
    report = values["istio_report"][0]
    return Settings(
        scenarios=scenarios,
        scenarios_defaulted=scenarios_only and not raw_paths,
        scenarios_only=scenarios_only,
        node_ids=node_ids,
        backend=str(backend),
        control_plane=str(values["istio_control_plane"][0]),
        report=Path(config.invocation_params.dir, report) if report else None,
        keep=str(values["istio_keep"][0]),
        istio_version=str(values["istio_version"][0] or "latest"),
        istio_revision=values["istio_revision"][0] or None,
        kubeconfig=Path(kubeconfig).expanduser() if kubeconfig else None,
        context=context or None,
        allow_mesh_wide=allow_mesh_wide,
        hub=str(values["istio_hub"][0] or BY_DEST["istio_hub"].default).rstrip("/"),
        tag=values["istio_tag"][0] or None,
        images=images,
        kind_cluster=str(values["istio_kind_cluster"][0] or BY_DEST["istio_kind_cluster"].default),
        kind_image=values["istio_kind_image"][0] or None,
        kind_config=files["istio_kind_config"],
        kind_bin=files["istio_kind_bin"],
        istioctl=files["istio_istioctl"],
        timeout=timeout,
        update_expectations=bool(values["istio_update_expectations"][0]),
        rootdir=rootdir,
        extra=_pytest_kind_options(config),
    )


def _scenario_arguments(config: pytest.Config) -> tuple[Path, ...]:
    """Scenario files named as arguments (``pytest tests/mesh/x.yaml``): naming one asks to run it."""
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        return ()
    from .scenario.loader import looks_like_scenario

    paths = (argument_path(config, arg) for arg in config.args)
    return tuple(path for path in paths if path.is_file() and looks_like_scenario(path))


def argument_path(config: pytest.Config, arg: str) -> Path:
    """The file or directory of a command-line argument (``file.yaml::NAME::ROW`` → ``file.yaml``)."""
    return Path(config.invocation_params.dir, arg.split("::", maxsplit=1)[0]).resolve()


def _pytest_kind_options(config: pytest.Config) -> dict[str, Any]:
    """pytest-kind's own flags, honoured when that plugin is installed and they mean the same thing."""
    extra: dict[str, Any] = {}
    given = config.invocation_params.args
    for dest, flag in (("cluster_name", "--cluster-name"), ("keep_cluster", "--keep-cluster"),
                       ("kind_image", "--kind-image"), ("kind_bin", "--kind-bin")):
        value = config.getoption(dest, default=None)
        # pytest-kind gives --cluster-name a default ("pytest-kind"): only an explicit flag counts.
        explicit = any(a == flag or a.startswith(flag + "=") for a in given)
        if value not in (None, False) and (explicit or dest != "cluster_name"):
            extra[dest] = value
    return extra

