"""Report renderers (terminal, Markdown, HTML), report.json's schema and write_all, without a mesh."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from pytest_istio_mtls.commands.cli import prediction_report
from pytest_istio_mtls.judge.observation import CaptureEvidence, Evidence, Observation, Probe, ProxyEvidence
from pytest_istio_mtls.model import Port, Scenario, Workload, default_topology
from pytest_istio_mtls.report import clear, write_all
from pytest_istio_mtls.report.html import render_html
from pytest_istio_mtls.report.junit import classname
from pytest_istio_mtls.report.markdown import CAP_BYTES, render_markdown
from pytest_istio_mtls.report.model import Report, Row, ScenarioReport, merge, report_from_json
from pytest_istio_mtls.report.terminal import render

REASON = "httpbin.foo:8000 STRICT (PeerAuthentication foo/default) [P2]; curl.foo sends istio-mtls [O1] → mtls"
ERROR_MESSAGE = (
    "curl.legacy->httpbin.foo:8000 in scenario strict\n"
    "  expected: refused\n"
    "  observed: ERROR: the server sidecar recorded nothing for this probe\n"
    "  oracle:   refused: STRICT"
)


def _evidence() -> dict[str, Any]:
    """A real observation's JSON, so the schema is checked against what backends actually emit."""
    client = Workload("curl", "foo", {"app": "curl"}, "curl", sidecar=True)
    server = Workload("httpbin", "foo", {"app": "httpbin"}, "httpbin", sidecar=True, ports=(Port("http", 8000, 80),))
    observation = Observation(
        probe=Probe(client, server, server.ports[0]), status=200, body='{"headers": {}}', latency_ms=12.3456,
        echoed=True,
        evidence=Evidence(
            client_proxy=ProxyEvidence("curl.foo", {"cluster.outbound|8000||httpbin.foo.ssl.handshake": 1}),
            server_proxy=ProxyEvidence("httpbin.foo", access_log=[{"response_flags": "-"}]),
            peer_identity="spiffe://cluster.local/ns/foo/sa/curl", identity_source="xfcc",
            capture=CaptureEvidence("eth0", flow="10.0.0.3:41234 > 10.0.0.4:80", packets=9, tls_records=6,
                                    client_hello=True, alpn=["istio"]),
        ),
    )
    return observation.to_json()


def run_report() -> Report:
    """Two scenarios: a 2 clients × 2 columns matrix (one wrong, one error, one missing cell) and a failed one."""
    strict = ScenarioReport("strict", "scenarios/strict.yaml", "STRICT in foo", rows=[
        Row("curl.foo", "httpbin.foo", 8000, "mtls", REASON, "correct", expected="mtls", observed="mtls",
            http_status=200, because=["server sidecar completed a TLS handshake"], evidence=_evidence()),
        Row("curl.foo", "httpbin.bar", 8000, "mtls", REASON, "wrong", expected="mtls", observed="plaintext",
            http_status=200, message="curl.foo->httpbin.bar:8000 in scenario strict\n  observed: plaintext"),
        Row("curl.legacy", "httpbin.foo", 8000, "refused", REASON, "error", expected="refused",
            message=ERROR_MESSAGE),
    ], policies=["PeerAuthentication foo/default"])
    broken = ScenarioReport("broken", "scenarios/broken.yaml", rows=[
        Row("curl.foo", "httpbin.foo", 8000, "mtls", REASON, "error", expected="mtls",
            message="x\n  observed: ERROR: policies never took effect"),
    ], error="policies never took effect within 60s\nkubectl said: ...")
    return Report("kind", [strict, broken], versions={"istio": "1.27.1", "kubernetes": "1.33.1"},
                  started="2025-06-01T12:00:00+00:00", duration_s=84.5123)


def predict_report() -> Report:
    """A prediction with a pair the file expects otherwise, a coarse expectation it covers, and an unknown."""
    rows = [
        Row("a.ns", "b.ns", 80, "mtls", "auto mTLS", "predicted"),
        Row("a.ns", "c.ns", 80, "mtls", "auto mTLS", "predicted", expected="plaintext"),
        Row("legacy.old", "b.ns", 80, "plaintext", "no sidecar", "predicted", expected="allowed"),
        Row("legacy.old", "c.ns", 80, "unknown", "ambient", "predicted", expected="mtls"),
        Row("legacy.old", "d.ns", 9000, "refused", "STRICT", "predicted"),
    ]
    return Report("predict", [ScenarioReport("oracle", "scenarios/oracle.yaml", rows=rows)])


def test_terminal_run_report() -> None:
    """The run truth table: ✓/✗/! cells, · for no row, counts, one line per failure, and a total line."""
    assert render(run_report()) == (
        "backend: kind  istio=1.27.1 kubernetes=1.33.1\n"
        "\n"
        "strict  (scenarios/strict.yaml)\n"
        "             httpbin.foo:8000       httpbin.bar:8000\n"
        "curl.foo     ✓ mtls                 ✗ plaintext (exp mtls)\n"
        "curl.legacy  ! error (exp refused)  ·\n"
        "1 correct, 1 wrong, 1 error\n"
        "  ✗ curl.foo->httpbin.bar:8000 expected mtls, observed plaintext\n"
        "  ! curl.legacy->httpbin.foo:8000 expected refused: the server sidecar recorded nothing for this probe\n"
        "\n"
        "broken  (scenarios/broken.yaml)\n"
        "          httpbin.foo:8000\n"
        "curl.foo  ! error (exp mtls)\n"
        "0 correct, 0 wrong, 1 error; scenario error: policies never took effect within 60s\n"
        "  ! curl.foo->httpbin.foo:8000 expected mtls: policies never took effect\n"
        "\n"
        "total: 1 correct, 1 wrong, 2 errors"
    )


def test_terminal_predict_report() -> None:
    """The prediction table: predicted results, `*` where the expectation does not cover them, counts by result."""
    assert render(predict_report()) == (
        "oracle prediction (no mesh)\n"
        "\n"
        "oracle  (scenarios/oracle.yaml)\n"
        "            b.ns:80    c.ns:80  d.ns:9000\n"
        "a.ns        mtls       mtls *   ·\n"
        "legacy.old  plaintext  unknown  refused\n"
        "5 rows: 2 mtls, 1 plaintext, 1 refused, 1 unknown\n"
        "* the scenario file expects something else"
    )


def test_terminal_joins_requests_and_clips_long_lines() -> None:
    """Rows sharing a cell are stacked, a line each (naming their request); failure lines stop at 160 characters."""
    rows = [
        Row("a.ns", "b.ns", 80, "mtls", "r", "correct", expected="mtls", observed="mtls"),
        Row("a.ns", "b.ns", 80, "mtls", "r", "error", expected="mtls", request="POST /post",
            message="  observed: ERROR: " + "x" * 300),
    ]
    lines = render(Report("local", [ScenarioReport("s", "s.yaml", rows=rows)])).splitlines()
    assert lines[1:4] == ["      b.ns:80", "a.ns  ✓ mtls", "      POST /post: ! error (exp mtls)"]
    assert lines[-1].startswith("  ! a.ns->b.ns:80:POST:/post expected mtls: xxx")
    assert len(lines[-1]) == 160
    assert lines[-1].endswith("x…")


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((files("pytest_istio_mtls.report") / "report.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def _json(report: Report) -> dict[str, Any]:
    """report.json exactly as write_all serialises it."""
    document: dict[str, Any] = json.loads(json.dumps(report.to_json()))
    return document


@pytest.mark.parametrize("report", [
    run_report(),
    predict_report(),
    prediction_report([Scenario("default", Path("default.yaml"), topology=default_topology())]),
    Report("existing"),
], ids=["run", "predict", "cli-predict", "empty"])
def test_report_json_validates(schema: dict[str, Any], report: Report) -> None:
    """Every kind of report.json that Report.to_json() emits is valid against report.schema.json."""
    jsonschema.validate(_json(report), schema, cls=jsonschema.Draft202012Validator)


def _break(document: dict[str, Any], change: str) -> None:
    row = document["scenarios"][0]["rows"][0]
    if change == "status":
        row["status"] = "passed"
    elif change == "correct-without-observed":
        row["observed"] = None
    elif change == "observed-coarse":
        row["observed"] = "allowed"
    elif change == "missing-rows":
        del document["scenarios"][0]["rows"]
    elif change == "schema-version":
        document["schemaVersion"] = 2
    elif change == "evidence-string":
        row["evidence"] = "{}"
    elif change == "port-string":
        row["port"] = "8000"


@pytest.mark.parametrize("change", ["status", "correct-without-observed", "observed-coarse", "missing-rows",
                                    "schema-version", "evidence-string", "port-string"])
def test_schema_rejects_broken_documents(schema: dict[str, Any], change: str) -> None:
    """The schema can fail: a wrong enum, type, nullability, version or missing key is rejected."""
    document = _json(run_report())
    _break(document, change)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, schema, cls=jsonschema.Draft202012Validator)


def _unescaped_pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


def test_markdown_table_and_pipe_escaping() -> None:
    """The Markdown matrix is a GitHub table with the run's cells, and a `|` in a cell cannot split it."""
    report = run_report()
    report.scenarios[0].rows[0].request = "GET /a|b"
    md = render_markdown(report)
    assert md.startswith("# Istio mTLS report\n")
    assert "✅ 1 correct · ❌ 1 wrong · ⚠️ 2 errors" in md
    assert "## strict" in md
    assert "| from \\ to | httpbin.foo:8000 | httpbin.bar:8000 |" in md
    assert "| **curl.legacy** | ⚠️ error (exp refused) | · |" in md
    assert "GET /a\\|b: ✅ mtls" in md
    table = [line for line in md.splitlines() if line.startswith("|")][:4]
    assert [_unescaped_pipes(line) for line in table] == [4, 4, 4, 4]
    assert "  ```text\n  curl.legacy->httpbin.foo:8000 in scenario strict\n" in md  # the message, fenced
    assert "spiffe://" not in md  # no raw evidence


def test_markdown_predict_cells() -> None:
    """A prediction's Markdown cells show the result, spelling out an expectation that disagrees."""
    md = render_markdown(predict_report())
    assert "| **a.ns** | mtls | mtls (exp plaintext) | · |" in md
    assert "5 rows: 2 mtls, 1 plaintext, 1 refused, 1 unknown · 1 disagrees with the scenario files" in md


def test_markdown_stays_under_step_summary_cap() -> None:
    """5000 failing rows with long messages still fit GitHub's step summary: the details list is cut, saying so."""
    message = "a->b in scenario big\n  observed: ERROR: timeout\n" + ("diagnostic line " * 8 + "\n") * 40
    rows = [Row(f"client-{i // 50}.ns", f"server-{i % 50}.ns", 8080, "mtls", "r", "error", expected="mtls",
                message=message) for i in range(5000)]
    md = render_markdown(Report("kind", [ScenarioReport("big", "big.yaml", rows=rows)]))
    assert len(md.encode("utf-8")) <= CAP_BYTES
    assert "| **client-99.ns** |" in md  # the whole table is kept
    assert re.search(r"_… \d+ more rows not shown", md)


class _Structure(HTMLParser):
    """Records tags and checks that every non-void element is closed in order."""

    VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()


def _parse(page: str) -> _Structure:
    parser = _Structure()
    parser.feed(page)
    parser.close()
    assert parser.stack == []
    return parser


def test_html_is_self_contained_and_well_formed() -> None:
    """report.html fetches nothing (no http(s) src/href, no script, no stylesheet link) and its tags nest."""
    for page in (render_html(run_report()), render_html(predict_report())):
        assert page.startswith("<!DOCTYPE html>\n<html lang=\"en\">")
        parsed = _parse(page)
        tags = {tag for tag, _ in parsed.tags}
        assert "style" in tags
        assert not tags & {"script", "link", "img", "iframe", "object"}
        for _, attrs in parsed.tags:
            for name in ("src", "href"):
                assert not re.match(r"\s*(https?:)?//", attrs.get(name) or ""), attrs
        assert "http://" not in page and "https://" not in page


def test_html_escapes_user_strings() -> None:
    """Scenario names, messages and evidence are escaped: an injected <script> stays text."""
    report = run_report()
    report.scenarios[0].name = '<script>alert("name")</script>'
    report.scenarios[0].rows[1].message = "<script>alert('message')</script>"
    assert report.scenarios[0].rows[0].evidence is not None
    report.scenarios[0].rows[0].evidence["body"] = "<script>alert(1)</script>"
    page = render_html(report)
    assert "<script" not in page
    assert "&lt;script&gt;alert(&quot;name&quot;)&lt;/script&gt;" in page
    assert "&lt;script&gt;alert(&#x27;message&#x27;)&lt;/script&gt;" in page


def test_html_has_each_scenarios_matrix() -> None:
    """Each scenario gets a matrix: cells coloured by result, marked wrong/error, titled with the reason."""
    page = render_html(run_report())
    assert page.count('<table class="matrix">') == 2
    assert page.count('<th scope="row">curl.legacy</th>') == 1
    assert re.search(r'<a class="c r-mtls" href="#row-scenarios-strict.yaml--curl.foo--httpbin.foo-8000" '
                     r'title="httpbin.foo:8000 STRICT[^"]*">✓ mtls</a>', page)
    assert '<a class="c r-plaintext s-wrong"' in page
    assert '<a class="c r-error s-error"' in page
    assert '<td class="none">·</td>' in page
    assert '<details id="row-scenarios-strict.yaml--curl.foo--httpbin.bar-8000" open>' in page  # failures unfolded
    assert "spiffe://cluster.local/ns/foo/sa/curl" in page  # evidence included
    assert '<a class="c r-mtls s-disagree"' in render_html(predict_report())


def test_write_all(tmp_path: Path) -> None:
    """write_all writes report.json (Report.to_json()), report.md and report.html into the directory."""
    report = run_report()
    written = write_all(report, tmp_path / "out")
    assert [path.name for path in written] == ["report.json", "report.md", "report.html"]
    assert json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8")) == _json(report)
    assert (tmp_path / "out" / "report.md").read_text(encoding="utf-8") == render_markdown(report)
    assert (tmp_path / "out" / "report.html").read_text(encoding="utf-8") == render_html(report)


def test_a_report_survives_the_trip_from_an_xdist_worker() -> None:
    original = run_report()
    back = report_from_json(json.loads(json.dumps(original.to_json())))
    assert back.to_json() == original.to_json()


def test_worker_reports_merge_into_one() -> None:
    """Each pytest-xdist worker runs its own mesh; the controller shows one truth table and one report."""
    whole = run_report()
    strict = whole.scenarios[0]
    one = Report("local", [ScenarioReport(strict.name, strict.file, strict.description, strict.rows[:2],
                                          strict.policies)], versions={"envoy": "1.40.0"},
                 started="2025-06-01T12:00:05+00:00", duration_s=30.0)
    two = Report("local", [ScenarioReport(strict.name, strict.file, strict.description, strict.rows[2:],
                                          strict.policies), whole.scenarios[1]], versions={"envoy": "1.40.0"},
                 started="2025-06-01T12:00:00+00:00", duration_s=42.0)
    merged = merge([one, two])
    assert [s.name for s in merged.scenarios] == ["broken", "strict"]
    assert merged.scenarios[1].rows == strict.rows
    assert merged.counts() == whole.counts() == {"correct": 1, "wrong": 1, "error": 2, "predicted": 0, "not run": 0}
    assert (merged.started, merged.duration_s, merged.versions) == ("2025-06-01T12:00:00+00:00", 42.0,
                                                                   {"envoy": "1.40.0"})


def _index(text: str, start: str, end: str) -> list[str]:
    lines = text.splitlines()
    first = lines.index(start)
    return lines[first: lines.index(end, first) + 1]


def test_markdown_starts_with_a_failures_index() -> None:
    """report.md lists every failing row and scenario error at the top, each row linking to its details."""
    md = render_markdown(run_report())
    assert _index(md, "## Failures", "## strict") == [
        "## Failures",
        "",
        "- ❌ [strict: curl.foo->httpbin.bar:8000](#row-scenarios-strict.yaml--curl.foo--httpbin.bar-8000) "
        "expected mtls, observed plaintext",
        "- ⚠️ [strict: curl.legacy->httpbin.foo:8000](#row-scenarios-strict.yaml--curl.legacy--httpbin.foo-8000) "
        "expected refused: the server sidecar recorded nothing for this probe",
        "- ⚠️ broken: scenario error: policies never took effect within 60s",
        "- ⚠️ [broken: curl.foo->httpbin.foo:8000](#row-scenarios-broken.yaml--curl.foo--httpbin.foo-8000) "
        "expected mtls: policies never took effect",
        "",
        "## strict",
    ]
    targets = re.findall(r"\]\(#([^)]+)\)", md)
    assert targets and all(f'<a name="{target}"></a>' in md for target in targets)
    assert "## Disagreements" in render_markdown(predict_report())
    assert "## Failures" not in render_markdown(Report("local", [ScenarioReport("ok", "ok.yaml", rows=[
        Row("a.ns", "b.ns", 80, "mtls", "r", "correct", expected="mtls", observed="mtls")])]))


def test_markdown_index_links_only_rows_whose_details_fit() -> None:
    """Under the step-summary cap the index stays bounded and never links to a cut row's missing anchor."""
    rows = [Row(f"client-{i}.ns", "server.ns", 8080, "mtls", "r", "error", expected="mtls",
                message="a->b\n  observed: ERROR: timeout\n" + ("diagnostic line " * 8 + "\n") * 40)
            for i in range(5000)]
    md = render_markdown(Report("kind", [ScenarioReport("big", "big.yaml", rows=rows)]))
    assert len(md.encode("utf-8")) <= CAP_BYTES
    index = _index(md, "## Failures", "## big")
    assert len(index) == 2 + 200 + 1 + 2
    assert index[-3] == "- … 4800 more rows"
    targets = re.findall(r"\]\(#([^)]+)\)", "\n".join(index))
    assert 0 < len(targets) < 200
    assert all(f'<a name="{target}"></a>' in md for target in targets)


def test_html_starts_with_a_failures_index() -> None:
    """report.html opens with the failing rows and scenario errors, each linking to its details on the page."""
    page = render_html(run_report())
    assert _index(page, '<nav class="failures"><h2>Failures</h2><ul>', "</ul></nav>")[1:] == [
        '<li><a href="#row-scenarios-strict.yaml--curl.foo--httpbin.bar-8000">strict: curl.foo-&gt;httpbin.bar:8000'
        "</a> expected mtls, observed plaintext</li>",
        '<li><a href="#row-scenarios-strict.yaml--curl.legacy--httpbin.foo-8000">strict: curl.legacy-&gt;'
        "httpbin.foo:8000</a> expected refused: error: the server sidecar recorded nothing for this probe</li>",
        '<li><a href="#s1">broken</a>: scenario error: policies never took effect within 60s</li>',
        '<li><a href="#row-scenarios-broken.yaml--curl.foo--httpbin.foo-8000">broken: curl.foo-&gt;httpbin.foo:8000'
        "</a> expected mtls: error: policies never took effect</li>",
        "</ul></nav>",
    ]
    ids = {attrs["id"] for _, attrs in _parse(page).tags if attrs.get("id")}
    assert {href[1:] for href in re.findall(r'href="(#[^"]+)"', page)} <= ids
    assert '<nav class="failures">' not in render_html(Report("local", [ScenarioReport("ok", "ok.yaml", rows=[
        Row("a.ns", "b.ns", 80, "mtls", "r", "correct", expected="mtls", observed="mtls")])]))


def test_html_gives_every_result_its_own_colour() -> None:
    """refused, unavailable and denied are different failures: each has its own colour and legend entry."""
    page = render_html(run_report())
    colours = dict(re.findall(r"\.r-([a-z]+) \{ background: (#[0-9a-f]{6}); \}", page))
    colours = {result: colours[result] for result in ("mtls", "plaintext", "refused", "unavailable", "denied")}
    assert len(set(colours.values())) == len(colours)
    assert all(f'<span class="c r-{result}">{result}</span>' in page for result in colours)


def _captured(report_dir: Path) -> Report:
    """A wrong row whose evidence kept a capture inside the report directory (as the backends write it)."""
    pcap = report_dir / "captures" / "strict" / "curl.foo_to_httpbin.bar_8000 (1).pcap"
    evidence = _evidence()
    evidence["evidence"]["capture"]["pcap"] = str(pcap)
    row = Row("curl.foo", "httpbin.bar", 8000, "mtls", REASON, "wrong", expected="mtls", observed="plaintext",
              message=f"curl.foo->httpbin.bar:8000 in scenario strict\n  evidence:\n    capture ..., pcap {pcap}",
              evidence=evidence)
    return Report("local", [ScenarioReport("strict", "scenarios/strict.yaml", rows=[row])])


def test_captures_are_links_relative_to_the_report(tmp_path: Path) -> None:
    """report.json, .md and .html name a capture relative to their directory, and link it, so the links work
    once the directory is uploaded as a CI artifact; the report given is not changed."""
    out = tmp_path / "out"
    report = _captured(out)
    write_all(report, out)
    relative = "captures/strict/curl.foo_to_httpbin.bar_8000 (1).pcap"
    data = json.loads((out / "report.json").read_text())
    row = data["scenarios"][0]["rows"][0]
    assert row["evidence"]["evidence"]["capture"]["pcap"] == relative
    assert row["message"].endswith(f"pcap {relative}")
    md = (out / "report.md").read_text()
    assert ("  capture: [captures/strict/curl.foo\\_to\\_httpbin.bar\\_8000 (1).pcap]"
            "(captures/strict/curl.foo_to_httpbin.bar_8000%20%281%29.pcap)") in md
    html = (out / "report.html").read_text()
    assert ('<dt>capture</dt><dd><a href="captures/strict/curl.foo_to_httpbin.bar_8000%20%281%29.pcap">'
            f"{relative}</a></dd>") in html
    assert str(tmp_path) not in md + html + json.dumps(data)
    assert report.scenarios[0].rows[0].evidence["evidence"]["capture"]["pcap"] == str(out / relative)  # type: ignore[index]


def test_clear_removes_only_what_a_run_wrote(tmp_path: Path) -> None:
    """A re-run into the same --istio-report starts without the previous captures and reports; files that are
    not ours stay."""
    for name in ("report.json", "report.md", "report.html", "captures/old/a.pcap", "captures/old/b.pcap",
                 "pcaps/istio-mtls-probe-1.pcap", "captures/notes.txt", "junit.xml", "report.css"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    removed = clear(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in removed) == [
        "captures/old/a.pcap", "captures/old/b.pcap", "pcaps/istio-mtls-probe-1.pcap",
        "report.html", "report.json", "report.md"]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "captures", "captures/notes.txt", "junit.xml", "report.css"]
    assert clear(tmp_path / "missing") == []


def test_a_run_clears_the_previous_report_first(pytester: pytest.Pytester, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`pytest --istio-report DIR` clears DIR's earlier captures before probing (here the backend cannot even
    start: no docker on PATH); `--collect-only` leaves them."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no docker: the run stops at its first item
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pytester.mkdir("scenarios")
    (pytester.path / "scenarios/x.yaml").write_text("expect:\n  - {from: frontend, to: backend, result: mtls}\n")
    (pytester.path / "out/captures/old").mkdir(parents=True)
    (pytester.path / "out/captures/old/a.pcap").write_text("x")
    (pytester.path / "out/keep.txt").write_text("x")
    args = ("--istio-scenarios", "--istio-backend=kind", "--istio-report=out", "-p", "no:cacheprovider")
    pytester.runpytest_subprocess(*args, "--collect-only")
    assert (pytester.path / "out/captures/old/a.pcap").exists()
    result = pytester.runpytest_subprocess(*args)
    result.stdout.fnmatch_lines(["*the kind backend cannot run here*"])
    assert not (pytester.path / "out/captures").exists()
    assert (pytester.path / "out/keep.txt").exists()


def test_junit_classnames_have_no_dots_from_file_or_scenario_names() -> None:
    """Jenkins and GitLab split a classname at dots: only directories may become packages."""
    assert classname("scenarios/03-namespace-strict.yaml::namespace-strict::curl.legacy->httpbin.foo:8000") == (
        "scenarios.03-namespace-strict.namespace-strict")
    assert classname("mesh.v2/ns.strict.yml::ns.strict::a.b->c.d:80:POST:/post") == "mesh_v2.ns_strict.ns_strict"
    assert classname("x.yaml::x::a->b:80") == "x.x"
