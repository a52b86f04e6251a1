"""Where the tests find the repository and their recorded data, however deep a test module sits."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "tests" / "unit"  # data/ (scenarios, pcaps, CRD schemas) and replays/ (recorded cluster output)
