"""Loading and validating scenario files: YAML in, a ``Scenario`` or positioned errors out.

The file format is the public contract (README "Scenario format"). Every problem found is
reported at once, each with ``file:line:column``, what is wrong and how to fix it. Nothing here
touches a cluster.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..model import (
    MeshSettings,
    Policy,
    Scenario,
    Step,
    Topology,
    default_topology,
)
from ..model.diagnostics import Diagnostic, Mark, ScenarioError, did_you_mean, plural
from .checks import Checker, type_name
from .resolve import routed_subsets
from .resources import PolicyValidator
from .rows import derive_rows, read_expectations
from .topology import TopologyReader, read_mesh
from .yamlpos import Located, block_scalar_offset, load_all, load_one

TOP_KEYS = ("name", "description", "mesh", "topology", "policies", "policyFiles", "expect", "steps",
            "expectWarnings")
STEP_KEYS = ("name", "description", "policies", "remove", "expect")
SCENARIO_SUFFIXES = (".yaml", ".yml")
POLICY_FILE_SUFFIXES = (".yaml", ".yml", ".json")  # what kubectl apply -f DIR reads
POLICY_COMMAND_KEYS = ("command",)
POLICY_COMMAND_TIMEOUT_S = 120.0  # kustomize or helm may fetch remote bases and charts
COMMAND_TAIL_LINES = 10
STEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a pytest id part: no '::', '/', '[' or spaces
Source = tuple[Located, tuple[str | int, ...]]  # where a policy was written: its document and path
POLICY_REF = re.compile(r"^([A-Za-z]+) ([^\s/]+)/([^\s/]+)$")


def display_path(path: Path) -> str:
    """A path as users want to read it: relative to the working directory when below it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)
    return str(path) if relative.startswith("..") else relative


def looks_like_scenario(path: Path) -> bool:
    """Cheap test used by collection: a YAML mapping that is not a Kubernetes manifest.

    Policy files referenced through ``policyFiles`` may live next to scenarios; they start with
    ``apiVersion``/``kind`` and are skipped here.
    """
    if path.suffix not in SCENARIO_SUFFIXES:
        return False
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return True  # let load_scenario report it properly
    top_keys = set(re.findall(r"^([A-Za-z]+)\s*:", text, flags=re.MULTILINE))
    if {"apiVersion", "kind"} <= top_keys:
        return False
    return bool(top_keys & set(TOP_KEYS)) or not top_keys


class _Loader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = display_path(path)
        self.diagnostics: list[Diagnostic] = []

    def fail_if_errors(self) -> None:
        """Raise with every diagnostic (warnings too, they often explain the error) in file order."""
        if any(d.severity == "error" for d in self.diagnostics):
            raise ScenarioError(sorted(dict.fromkeys(self.diagnostics),
                                       key=lambda d: (d.mark.file != self.file, d.mark)))

    # -- entry --------------------------------------------------------------------------------------

    def load(self) -> Scenario:
        try:
            source = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ScenarioError([Diagnostic("error", Mark(self.file, 1, 1), "no such scenario file",
                                            "check the path")]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ScenarioError([Diagnostic("error", Mark(self.file, 1, 1), f"cannot read the file: {exc}",
                                            "scenario files are UTF-8 YAML")]) from None
        located = load_one(source, self.file)
        check = Checker(located, self.diagnostics)
        data = located.data
        if data is None:
            check.error((), "the scenario file is empty",
                        "write at least an 'expect:' list; see the scenario format in the README")
            self.fail_if_errors()
        if not check.mapping((), data, "a scenario"):
            self.fail_if_errors()
        check.keys((), data, TOP_KEYS, "the scenario")

        name = data.get("name", self.path.stem)
        if check.text(("name",), name, "name") and ("::" in name or "\n" in name):
            check.error(("name",), f"name '{name}' may not contain '::' or line breaks",
                        "use letters, digits, '-', '_' and '.'")
        description = data.get("description", "")
        if not isinstance(description, str):
            check.error(("description",), f"description must be text, not {type_name(description)}")
        mesh = read_mesh(check, data.get("mesh"))
        topology = TopologyReader().read(check, data) if "topology" in data else default_topology()
        validator = _Recorder(topology, mesh)
        self._policy_files(check, data.get("policyFiles"), validator)
        self._inline_policies(check, source, data.get("policies"), validator, located, ("policies",))
        draft = Scenario(name=str(name), path=self.path, description=str(description or ""), mesh=mesh,
                         topology=topology, policies=tuple(validator.policies))
        if "steps" in data:
            if "expect" in data:
                check.error(("expect",), "a scenario with steps has no top-level 'expect': each step has its own",
                            "move the rows into each step's expect:", key=True)
            scenario = dataclasses.replace(draft, steps=self._steps(check, source, located, data["steps"],
                                                                    validator, draft))
        else:
            expectations, derived = read_expectations(check, ("expect",), data.get("expect"), draft)
            validator.warn_traps(routed_subsets(draft, expectations))
            self.fail_if_errors()
            scenario = dataclasses.replace(draft, expectations=tuple(expectations), derived=derived)
            if derived:
                scenario = dataclasses.replace(scenario, expectations=derive_rows(check, scenario, ("expect",),
                                                                                   expectations))
        self.fail_if_errors()
        warnings = tuple(sorted(dict.fromkeys(d for d in self.diagnostics if d.severity == "warning"),
                                key=lambda d: d.mark))
        expected = self._expected_warnings(check, data.get("expectWarnings"), warnings)
        self.fail_if_errors()
        return dataclasses.replace(scenario, warnings=tuple(w for w in warnings if w not in expected),
                                   expected_warnings=tuple(w for w in warnings if w in expected))

    @staticmethod
    def _expected_warnings(check: Checker, raw: Any, warnings: tuple[Diagnostic, ...]) -> set[Diagnostic]:
        """The warnings ``expectWarnings`` names (each entry a part of a warning's text): a library scenario that
        shows a trap on purpose says so, and an entry that matches nothing is an error (the trap is gone)."""
        if raw is None or not check.is_list(("expectWarnings",), raw, "expectWarnings"):
            return set()
        matched: set[Diagnostic] = set()
        for index, text in enumerate(raw):
            if not check.text(("expectWarnings", index), text, "an expectWarnings entry"):
                continue
            found = [w for w in warnings if text in w.message]
            if not found:
                check.error(("expectWarnings", index), f"expectWarnings entry {text!r} matches no warning of this "
                            "scenario", "remove it, or restore the trap it names (each entry is part of a warning's "
                            "text, as `pytest-istio-mtls validate` prints it)")
            matched.update(found)
        return matched

    # -- steps --------------------------------------------------------------------------------------

    def _steps(self, check: Checker, source: str, located: Located, raw: Any, base: _Recorder,
               draft: Scenario) -> tuple[Step, ...]:
        """Each step's policy state (the previous one with the step's policies added or replaced by kind,
        namespace and name, and its ``remove`` entries removed) and its expectations."""
        if not check.is_list(("steps",), raw, "steps"):
            return ()
        if not raw:
            check.error(("steps",), "steps is empty", "add at least one step: {name: ..., expect: ...}")
        state: list[Policy] = list(base.policies)
        sources = dict(base.sources)
        steps: list[Step] = []
        for index, item in enumerate(raw):
            path: tuple[str | int, ...] = ("steps", index)
            if not check.mapping(path, item, "a step"):
                continue
            check.keys(path, item, STEP_KEYS, "a step")
            name = self._step_name(check, path, item, steps)
            description = item.get("description", "")
            if not isinstance(description, str):
                check.error((*path, "description"), f"description must be text, not {type_name(description)}")
                description = ""
            own = _Recorder(draft.topology, draft.mesh)
            self._inline_policies(check, source, item.get("policies"), own, located, (*path, "policies"))
            sources.update(own.sources)
            removed = self._removals(check, path, item.get("remove"), state, own.policies)
            before = {p.ref: p for p in state}
            state = [p for p in state if p.ref not in removed]
            added: list[str] = []
            changed: list[str] = []
            for policy in own.policies:
                old = next((i for i, p in enumerate(state) if p.ref == policy.ref), None)
                if old is None:
                    state.append(policy)
                    added.append(policy.ref)
                else:  # kubectl apply updates the object in place: it keeps its age
                    if state[old].manifest != policy.manifest:
                        changed.append(policy.ref)
                    state[old] = policy
            fresh, scratch = self._revalidate(state, sources, draft)
            state = fresh.policies
            if name is None:
                continue
            at_step = dataclasses.replace(draft, policies=tuple(state))
            rows, derived = read_expectations(check, (*path, "expect"), item.get("expect"), at_step,
                                               f"step '{name}'")
            if derived and not any(d.severity == "error" for d in self.diagnostics):
                rows = list(derive_rows(check, at_step, (*path, "expect"), rows))
            fresh.warn_traps(routed_subsets(at_step, rows))  # Istio's traps in this state (e.g. a second
            self.diagnostics.extend(d for d in scratch if d.severity == "warning")  # namespace-wide policy)
            step = Step(name=name, number=len(steps) + 1, policies=tuple(state), expectations=tuple(rows),
                        derived=derived, description=description, added=tuple(added), changed=tuple(changed),
                        removed=tuple(r for r in before if r in removed), mark=check.mark(path))
            if steps and not step.changes:
                check.warn(path, f"step '{name}' changes no policy: it probes the state of step '{steps[-1].name}' "
                           "again", "add policies: or remove: to the step, or merge its rows into that step")
            steps.append(step)
        return tuple(steps)

    def _step_name(self, check: Checker, path: tuple[str | int, ...], item: Mapping[str, Any],
                   steps: list[Step]) -> str | None:
        if "name" not in item:
            check.error(path, "a step has no name", "add name: <step name>, e.g. name: workload-strict")
            return None
        name = item["name"]
        if not check.text((*path, "name"), name, "step name"):
            return None
        if not STEP_NAME.match(name):
            check.error((*path, "name"), f"step name '{name}' may only hold letters, digits, '-', '_' and '.'",
                        "it is part of the pytest id (file::scenario::step::row), e.g. name: workload-strict")
            return None
        first = next((s for s in steps if s.name == name), None)
        if first is not None:
            check.error((*path, "name"), f"step '{name}' is named twice (first at {first.mark})",
                        "step names must be unique within a scenario")
            return None
        return str(name)

    def _removals(self, check: Checker, path: tuple[str | int, ...], raw: Any, state: list[Policy],
                  added: list[Policy]) -> set[str]:
        """The refs ``remove`` names: each a policy in force before the step, written ``Kind namespace/name``."""
        if raw is None or not check.is_list((*path, "remove"), raw, "remove"):
            return set()
        refs = [p.ref for p in state]
        removed: set[str] = set()
        for index, entry in enumerate(raw):
            where = (*path, "remove", index)
            if not isinstance(entry, str) or not POLICY_REF.match(entry.strip()):
                check.error(where, f"a remove entry is 'Kind namespace/name', not {entry!r}",
                            f"e.g. {refs[0] if refs else 'PeerAuthentication foo/default'}")
                continue
            ref = " ".join(entry.split())
            if ref not in refs:
                check.error(where, f"{ref} is not in force before this step{did_you_mean(ref, refs)}",
                            f"policies in force: {', '.join(refs) or 'none'}")
            elif any(p.ref == ref for p in added):
                check.error(where, f"the step both removes and applies {ref}",
                            "drop it from remove: (applying it again replaces it)")
            else:
                removed.add(ref)
        return removed

    @staticmethod
    def _revalidate(state: list[Policy], sources: dict[Policy, Source],
                    draft: Scenario) -> tuple[_Recorder, list[Diagnostic]]:
        """One step's policies validated together, as the cluster holds them (``order`` is their age), with
        the diagnostics apart: each document was validated when it was read."""
        scratch: list[Diagnostic] = []
        fresh = _Recorder(draft.topology, draft.mesh)
        for policy in state:
            located, where = sources[policy]
            fresh.add(Checker(located, scratch), where, policy.manifest)
        sources.update(fresh.sources)
        return fresh, scratch

    # -- sections -----------------------------------------------------------------------------------

    def _policy_files(self, check: Checker, files: Any, validator: PolicyValidator) -> None:
        if files is None:
            return
        if not check.is_list(("policyFiles",), files, "policyFiles"):
            return
        for index, entry in enumerate(files):
            path: tuple[str | int, ...] = ("policyFiles", index)
            skipped: Counter[str] = Counter()
            skipped_in: list[str] = []
            for label, text in self._policy_sources(check, path, entry):
                try:
                    documents = load_all(text, label)
                except ScenarioError as exc:
                    self.diagnostics.extend(exc.diagnostics)
                    continue
                before = skipped.total()
                for doc in documents:
                    if doc.data is not None:  # an empty document (a trailing ---), as kubectl ignores it
                        validator.add(Checker(doc, self.diagnostics), (), doc.data, skipped)
                if skipped.total() > before:
                    skipped_in.append(label)
            if skipped:
                kinds = [plural(count, kind) for kind, count in skipped.items()]
                listed = ", ".join(kinds[:-1]) + f" and {kinds[-1]}" if len(kinds) > 1 else kinds[0]
                check.warn(path, f"{', '.join(skipped_in)}: skipped {listed} (not Istio security or networking "
                                 "policies)")

    def _policy_sources(self, check: Checker, path: tuple[str | int, ...], entry: Any) -> list[tuple[str, str]]:
        """(label, YAML text) for one policyFiles entry: a file, every manifest of a directory, or a command's
        output. Problems are reported at the entry; nothing is returned for them."""
        if isinstance(entry, Mapping):
            check.keys(path, entry, POLICY_COMMAND_KEYS, "a policyFiles entry")
            command = entry.get("command")
            if "command" not in entry:
                check.error(path, "a policyFiles mapping has no 'command'",
                            "write {command: kustomize build deploy/overlays/prod}, or a path")
                return []
            if not check.text((*path, "command"), command, "policyFiles command"):
                return []
            output = self._run_policy_command(check, (*path, "command"), str(command))
            return [] if output is None else [(f"output of `{command}`", output)]
        if not isinstance(entry, str) or not entry:
            check.error(path, f"a policyFiles entry must be a path or a command, not {type_name(entry)}",
                        "write a file or directory relative to the scenario file, or {command: ...}")
            return []
        target = self.path.parent / entry
        if target.is_dir():
            files = sorted(f for f in target.iterdir() if f.suffix in POLICY_FILE_SUFFIXES and f.is_file()
                           and f.resolve() != self.path.resolve() and not looks_like_scenario(f))
            if not files:
                check.error(path, f"policy directory '{entry}' holds no manifests (*.yaml, *.yml, *.json)",
                            "subdirectories are not read (as with kubectl apply -f DIR): name them too")
            return [source for f in files for source in self._read_policy_file(check, path, entry, f)]
        return self._read_policy_file(check, path, entry, target)

    def _read_policy_file(self, check: Checker, path: tuple[str | int, ...], entry: str,
                          file: Path) -> list[tuple[str, str]]:
        try:
            return [(display_path(file.resolve()), file.read_text(encoding="utf-8"))]
        except (OSError, UnicodeDecodeError) as exc:
            reason = "no such file" if isinstance(exc, FileNotFoundError) else str(exc)
            check.error(path, f"cannot read policy file '{entry}': {reason}", "paths are relative to the scenario file")
            return []

    def _run_policy_command(self, check: Checker, path: tuple[str | int, ...], command: str) -> str | None:
        """Run ``command`` (no shell) in the scenario file's directory; its standard output is the manifests."""
        directory = self.path.parent.resolve()
        where = f"run it in {display_path(directory)} to see the whole output"
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            check.error(path, f"cannot split policy command `{command}`: {exc}", "check its quotes")
            return None
        try:
            done = subprocess.run(argv, cwd=directory, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  errors="replace", timeout=POLICY_COMMAND_TIMEOUT_S, check=False)
        except FileNotFoundError:
            check.error(path, f"cannot run policy command `{command}`: {argv[0]} not found",
                        f"install {argv[0]} or put it on PATH")
            return None
        except subprocess.TimeoutExpired:
            check.error(path, f"policy command `{command}` did not finish within {POLICY_COMMAND_TIMEOUT_S:g} s",
                        where)
            return None
        except OSError as exc:
            check.error(path, f"cannot run policy command `{command}`: {exc.strerror or exc}",
                        "the command runs without a shell: for pipes write sh -c '...'")
            return None
        if done.returncode != 0:
            tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-COMMAND_TAIL_LINES:]
            output = "".join(f"\n      {line}" for line in tail) if tail else " (no output)"
            check.error(path, f"policy command `{command}` failed (exit {done.returncode}):{output}", where)
            return None
        return done.stdout

    def _inline_policies(self, check: Checker, source: str, raw: Any, validator: PolicyValidator,
                         located: Located, path: tuple[str | int, ...]) -> None:
        if raw is None:
            return
        if isinstance(raw, list):  # a YAML list of resources is accepted too
            for index, item in enumerate(raw):
                validator.add(check, (*path, index), item)
            return
        if not isinstance(raw, str):
            check.error(path, f"policies must be a YAML block (policies: |) or a list, not {type_name(raw)}",
                        "write the resources exactly as you would kubectl-apply them, after 'policies: |'")
            return
        offset = block_scalar_offset(source, located.at(*path))
        line, col = offset if offset is not None else (located.at(*path).line - 1, 0)
        try:
            documents = load_all(raw, self.file, line_offset=line, col_offset=col)
        except ScenarioError as exc:
            self.diagnostics.extend(exc.diagnostics)
            return
        for doc in documents:
            validator.add(Checker(doc, self.diagnostics), (), doc.data)

    # -- expectations -------------------------------------------------------------------------------


class _Recorder(PolicyValidator):
    """A PolicyValidator that remembers where each policy was written, so that the policies of one step's state
    can be validated again together (their ages, Istio's traps across them)."""

    def __init__(self, topology: Topology, mesh: MeshSettings) -> None:
        super().__init__(topology, mesh)
        self.sources: dict[Policy, Source] = {}

    def add(self, checker: Checker, path: tuple[str | int, ...], value: Any,
            skipped: Counter[str] | None = None) -> None:
        before = len(self.policies)
        super().add(checker, path, value, skipped)
        for policy in self.policies[before:]:  # a List's items recorded themselves first, at their own paths
            self.sources.setdefault(policy, (checker.located, path))




def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Load and validate one scenario file. Raises ScenarioError listing every problem."""
    return _Loader(Path(path)).load()


def load_policies(text: str, topology: Topology, mesh: MeshSettings | None = None,
                  file: str = "<policies>") -> tuple[tuple[Policy, ...], tuple[Diagnostic, ...]]:
    """Validate Istio resources against a topology outside a scenario file (used by the fixtures).

    Returns the policies and the warnings; raises ScenarioError on errors.
    """
    diagnostics: list[Diagnostic] = []
    validator = PolicyValidator(topology, mesh or MeshSettings())
    for document in load_all(text, file):
        validator.add(Checker(document, diagnostics), (), document.data)
    validator.warn_traps()
    errors = [d for d in diagnostics if d.severity == "error"]
    if errors:
        raise ScenarioError(errors)
    return tuple(validator.policies), tuple(diagnostics)


