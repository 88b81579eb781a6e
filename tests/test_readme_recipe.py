"""The README's eager-mode test recipe, copied out of README.md as it stands, run by pytest
in a project directory of its own: no Postroom fixtures, no Redis server given."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Running the whole flow in tests (eager mode)"


def recipe() -> str:
    """The first Python block under the eager-mode heading, verbatim."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(SECTION):]
    match = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert match, "the eager-mode section has no python block"
    return match.group(1)


def test_the_readme_recipe_passes_in_a_new_project(tmp_path: Path) -> None:
    code = recipe()
    assert "record_messages()" in code and "/validate" in code
    project = tmp_path / "project"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / "test_postroom_recipe.py").write_text(code, encoding="utf-8")
    environ = {name: value for name, value in os.environ.items()
               if not name.startswith(("MAIL_", "REDIS_", "CELERY_", "POSTROOM_"))}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=project, env=environ, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout, result.stdout
