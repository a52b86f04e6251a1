"""The ``expect:`` rows of a scenario or a step: each row checked against the topology, or the oracle's
table for ``expect: derived``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from ..model import (
    EXPECTABLE_RESULTS,
    Expectation,
    Port,
    Request,
    Result,
    Scenario,
    Topology,
    Workload,
    pair_id,
)
from ..model.diagnostics import did_you_mean
from ..oracle import mtls
from .checks import Checker, type_name, unquote_fix
from .resolve import POD_PREFIX, Unresolved, resolve_client_tls, resolve_destination, resolve_workload

DERIVED_KEYS = ("derived", "rows")  # expect: {derived: true, rows: [...]}: the oracle's table, with these rows pinned
EXPECT_KEYS = ("from", "to", "endpoint", "subset", "tls", "request", "result", "status")
REQUEST_KEYS = ("method", "path", "headers", "body")
MARKER_HEADER = "x-istio-mtls-probe"
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")



def read_expectations(check: Checker, path: tuple[str | int, ...], raw: Any, scenario: Scenario,
                  owner: str = "the scenario") -> tuple[list[Expectation], bool]:
    """The explicit rows at ``path`` and whether the oracle's table is wanted too (``derived``)."""
    if raw is None:
        check.error(path[:-1], f"{owner} has no 'expect'",
                    "add an expect: list of {from, to, result} rows, or expect: derived", key=True)
        return [], False
    if raw == "derived":
        return [], True
    if isinstance(raw, str):
        check.error(path, f"expect must be a list of rows, 'derived' or {{derived: true, rows: [...]}}, not "
                    f"'{raw}'{did_you_mean(raw, ['derived'])}")
        return [], False
    if isinstance(raw, Mapping):
        check.keys(path, raw, DERIVED_KEYS, "expect")
        derived = raw.get("derived", False)
        if not check.boolean((*path, "derived"), derived, "expect.derived"):
            derived = False
        if "rows" not in raw:
            if not derived:
                check.error(path, "expect has no rows and is not derived",
                            "write derived: true (the oracle's table) and/or rows: [...]")
            return [], derived is True
        return _rows(check, (*path, "rows"), raw["rows"], scenario, allow_empty=derived is True), \
            derived is True
    return _rows(check, path, raw, scenario), False

def _rows(check: Checker, path: tuple[str | int, ...], raw: Any, scenario: Scenario, *,
          allow_empty: bool = False) -> list[Expectation]:
    if not check.is_list(path, raw, "expect" if path[-1] == "expect" else "expect.rows"):
        return []
    rows: list[Expectation] = []
    for index, item in enumerate(raw):
        row = _row(check, (*path, index), item, scenario)
        if row is None:
            continue
        key = (row.client, row.destination, row.port.port, row.request)
        first = next((r for r in rows if (r.client, r.destination, r.port.port, r.request) == key), None)
        if first is not None:
            check.error((*path, index), f"duplicate row {row.pair} (first at {first.mark})",
                        "each (from, to, port, request) may be expected once; delete one of the rows")
            continue
        rows.append(row)
    if not raw and not allow_empty:
        check.error(path, "expect is empty", "add at least one {from, to, result} row")
    return rows

def _row(check: Checker, path: tuple[str | int, ...], item: Any,
         scenario: Scenario) -> Expectation | None:
    topology = scenario.topology
    if not check.mapping(path, item, "an expect row"):
        return None
    check.keys(path, item, EXPECT_KEYS, "an expect row")
    missing = [k for k in ("from", "to", "result") if k not in item]
    if missing:
        check.error(path, f"expect row lacks {', '.join(missing)}",
                    "write rows like {from: curl.foo, to: httpbin.foo:8000, result: mtls}")
        return None
    source = _workload_ref(check, (*path, "from"), item["from"], topology)
    to = item["to"]
    if not check.text((*path, "to"), to, "a workload reference"):
        return None
    result_text = item["result"]
    ok = check.choice((*path, "result"), result_text, [r.value for r in EXPECTABLE_RESULTS], "result")
    if source is None:  # the destination's own problems are still worth reporting
        target = resolve_workload(topology, to.removeprefix(POD_PREFIX).partition(":")[0])
        if isinstance(target, Unresolved):
            check.error((*path, "to"), target.message, target.fix)
        return None
    tls = resolve_client_tls(source, item["tls"]) if "tls" in item else ""
    destination = resolve_destination(scenario, source, to, item.get("endpoint"), item.get("subset"))
    for problem in (tls, destination):
        if isinstance(problem, Unresolved):
            where = (*path, problem.key) if problem.key else path
            check.error(where, problem.message, problem.fix, key=problem.at_key)
    if isinstance(tls, Unresolved) or isinstance(destination, Unresolved) or not ok:
        return None
    target, port = destination
    result = Result(result_text)
    request = _request(check, (*path, "request"), item.get("request"), port)
    status = item.get("status")
    if status is not None and not _status(check, (*path, "status"), status, result, port):
        return None
    if request is None:
        return None
    return Expectation(source, target, port, result, dataclasses.replace(request, tls=tls), status,
                       check.mark(path), yaml_path=path)

def _workload_ref(check: Checker, path: tuple[str | int, ...], text: Any,
                  topology: Topology) -> Workload | None:
    if not check.text(path, text, "a workload reference"):
        return None
    workload = resolve_workload(topology, text)
    if isinstance(workload, Unresolved):
        check.error(path, workload.message, workload.fix)
        return None
    return workload

def _request(check: Checker, path: tuple[str | int, ...], raw: Any, port: Port) -> Request | None:
    if raw is None:
        return Request()
    if port.protocol == "tcp":
        check.error(path, f"a request applies to http ports only; port {port.port} is tcp",
                    "drop 'request' (tcp probes send a marker line and expect it echoed)", key=True)
        return None
    if not check.mapping(path, raw, "request"):
        return None
    check.keys(path, raw, REQUEST_KEYS, "request")
    method = raw.get("method", "GET")
    target = raw.get("path", "/headers")
    headers = raw.get("headers", {})
    body = raw.get("body")
    ok = check.text((*path, "method"), method, "request.method")
    if ok and not _TOKEN.match(method):
        check.error((*path, "method"), f"'{method}' is not an HTTP method", "use e.g. GET, POST, PUT")
        ok = False
    if check.text((*path, "path"), target, "request.path") and not str(target).startswith("/"):
        check.error((*path, "path"), f"request.path '{target}' must start with '/'", f"write /{target}")
        ok = False
    clean: dict[str, str] = {}
    if check.mapping((*path, "headers"), headers, "request.headers"):
        for key, value in headers.items():
            if not isinstance(key, str) or not _TOKEN.match(key):
                check.error((*path, "headers", key), f"'{key}' is not a valid header name", key=True)
                ok = False
            elif key.lower() == MARKER_HEADER:
                check.error((*path, "headers", key), f"header '{key}' is set by the tool on every probe",
                            "use another header name", key=True)
                ok = False
            elif not isinstance(value, str | int) or isinstance(value, bool):
                check.error((*path, "headers", key), f"header '{key}' must be text, not {value!r}",
                            "quote the value")
                ok = False
            else:
                clean[key] = str(value)
    else:
        ok = False
    if body is not None and not isinstance(body, str):
        check.error((*path, "body"), f"request.body must be text, not {type_name(body)}",
                    "quote it or use a block scalar (body: |)")
        ok = False
    if not ok:
        return None
    return Request(method=str(method).upper(), path=str(target), headers=clean, body=body)

def _status(check: Checker, path: tuple[str | int, ...], status: Any, result: Result, port: Port) -> bool:
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        check.error(path, f"status must be an HTTP status code (100-599), not {status!r}",
                    unquote_fix(path, status) or "write the code as a number, e.g. status: 200")
        return False
    if port.protocol == "tcp":
        check.error(path, f"port {port.port} is tcp: there is no HTTP status to pin", "drop 'status'", key=True)
        return False
    if result is Result.REFUSED:
        check.error(path, "a refused connection gets no HTTP response, so it has no status",
                    "drop 'status', or expect a result that answers", key=True)
        return False
    fixed = {Result.UNAVAILABLE: 503, Result.DENIED: 403}
    if result in fixed and status != fixed[result]:
        check.error(path, f"result {result.value} always answers {fixed[result]}, not {status}",
                    f"use status: {fixed[result]} or drop it")
        return False
    return True

def derive_rows(check: Checker, scenario: Scenario, path: tuple[str | int, ...],
            pins: list[Expectation]) -> tuple[Expectation, ...]:
    """The oracle's table (every client × other workload's server port), where a pinned row replaces the
    derived row of its pair; pins of pairs the table lacks (a request, a subset, a pod address) follow."""
    pinned = {row.pair: row for row in pins}
    rows: list[Expectation] = []
    unknown: list[str] = []
    for prediction in mtls.predict_all(scenario):
        if prediction.source.ref == prediction.target.ref:  # a workload calling itself is not a connection
            continue  # between two workloads: a derived table probes those only
        pair = pair_id(prediction.source, prediction.target, prediction.port, Request())
        if pair in pinned:
            rows.append(pinned.pop(pair))
        elif prediction.result is Result.UNKNOWN:
            unknown.append(f"{pair} ({prediction.reason})")
        else:
            rows.append(Expectation(prediction.source, prediction.target, prediction.port, prediction.result,
                                    mark=check.mark(path), reason=prediction.reason))
    rows += pinned.values()
    if unknown:
        check.error(path, "expect: derived, but the oracle cannot predict " + "; ".join(unknown),
                    "pin those pairs: expect: {derived: true, rows: [{from: ..., to: ..., result: ...}]}")
    if not rows and not unknown:
        check.error(path, "expect: derived, but the topology has no server ports to probe")
    return tuple(rows)
