"""The README's code runs as written (only the port differs) against a real emulator."""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
from pathlib import Path

from emulator.testing import EmulatorThread

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(heading: str) -> list[str]:
    text = README.read_text()
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def run_block(code: str, emulator: EmulatorThread) -> str:
    code = code.replace("http://127.0.0.1:8765", emulator.base_url)
    saved = dict(os.environ)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return out.getvalue()


def test_aioruntime_example_runs(emulator: EmulatorThread) -> None:
    (example,) = python_blocks("## Using aioruntime")
    output = run_block(example, emulator)
    counts = ast.literal_eval(output.strip())  # the example prints a counts dict
    assert set(counts) <= {"00", "11"} and sum(counts.values()) == 1000


def test_official_client_recipe_runs(emulator: EmulatorThread) -> None:
    recipe = python_blocks("### Pointing the official client at it")[0]
    namespace_check = recipe + "\nprint(sorted(b.name for b in service.backends()))\n"
    assert "ibm_fez" in run_block(namespace_check, emulator)


def test_saved_account_recipe_runs(emulator: EmulatorThread, tmp_path: Path) -> None:
    (recipe,) = [b for b in python_blocks("### Pointing the official client at it") if "save_" in b]
    # Saved to a file of the test's own, never to the user's ~/.qiskit.
    filename = tmp_path / "qiskit-ibm.json"
    assert recipe.count('name="emulator"') == 2
    code = recipe.replace('name="emulator"', f'filename={str(filename)!r}, name="emulator"')
    code += "\nprint(sorted(b.name for b in service.backends()))\n"
    assert "ibm_fez" in run_block(code, emulator)
    assert "/experimental" in filename.read_text()
