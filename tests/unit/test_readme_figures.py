"""The README's timing figures are the measured ones (benchmarks/figures.json, written from benchmark runs), not
hopes: it said the library runs on real istiod "in about 20 s" when it took 50 to 68 s, and "about 10 minutes" for
a cold build that took 14.5."""

from __future__ import annotations

import json

from ..paths import REPO

FIGURES = json.loads((REPO / "benchmarks" / "figures.json").read_text(encoding="utf-8"))
README = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())


def test_the_library_figure_is_the_benchmarks() -> None:
    library = FIGURES["library_local_istiod"]
    low, high = int(min(library["wall_s"])), round(max(library["wall_s"]))
    start = round(sum(library["backend_start_s"]) / len(library["backend_start_s"]))
    assert f"the whole library ({library['rows']} rows) runs on real istiod in {low} to {high} s" in README
    assert f"the control plane's start (about {start} s) included" in README
    assert f"runs of `benchmarks/library.py` on {library['date']}" in README


def test_the_cold_build_figure_is_the_measured_range() -> None:
    low, high = FIGURES["build_istio_cold"]["minutes"]
    assert f"A cold build takes {low} to {high} minutes on 2 cores" in README
    assert f"Go 1.26+, {low} to {high} minutes on 2 cores" in README
    assert "about 10 minutes" not in README and "about 20 s" not in README
