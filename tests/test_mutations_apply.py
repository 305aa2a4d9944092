"""bench/mutations.py breaks formulas by replacing exact source text: when a refactor moves that
text, the script can no longer apply its mutation. Fail here, in CI, rather than in the bench."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from mutations import MUTATIONS  # noqa: E402


def test_every_mutation_still_applies():
    missing = [name for name, (rel, old, _new) in MUTATIONS.items()
               if old not in (ROOT / rel).read_text(encoding="utf-8")]
    assert missing == [], f"update bench/mutations.py: original text gone for {missing}"
