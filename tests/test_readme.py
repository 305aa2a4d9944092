"""The README's Python examples run as printed (from the project root)."""

from __future__ import annotations

import os
import re

from conftest import ROOT


def test_readme_python_blocks_run():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 2
    cwd = os.getcwd()
    os.chdir(ROOT)  # the examples name scenario files relative to the project root
    try:
        namespace: dict = {}
        for block in blocks:
            exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    finally:
        os.chdir(cwd)
    assert namespace["res"].summary["requests_completed"] > 0
    assert not namespace["sweep"].aggregate.empty and not namespace["sweep"].pareto.empty
    assert namespace["answer"].cheapest is not None
