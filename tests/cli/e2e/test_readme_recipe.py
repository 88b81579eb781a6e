"""The README's recipes, copied out of README.md as it stands: the eager-mode test recipe,
run by pytest in a project directory of its own (no Postroom fixtures, no Redis server
given); and the "Try it" block, run by bash against a real ``postroom dev``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cli.dev import dev
from tests.cli.e2e.test_dev_e2e import DevRun, clean_environ, launch  # noqa: F401  (launch: a fixture)
from tests.support.paths import ROOT

README = ROOT / "README.md"
SECTION = "## Running the whole flow in tests (eager mode)"
TRY_IT = "## Try it"


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


def try_it() -> str:
    """The first sh block under "Try it", verbatim."""
    text = README.read_text(encoding="utf-8")
    match = re.search(r"```sh\n(.*?)```", text[text.index(TRY_IT):], flags=re.DOTALL)
    assert match, "the Try it section has no sh block"
    return match.group(1)


def test_try_it_comes_right_after_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    headings = re.findall(r"^## .+$", text, flags=re.MULTILINE)
    assert headings[0] == TRY_IT
    assert text.index("make run ") < text.index("make test ") < text.index(TRY_IT)


def test_every_dev_option_is_in_the_readme() -> None:
    text = README.read_text(encoding="utf-8")
    options = [name for param in dev.params for name in param.opts if name.startswith("--")]
    assert "--bounce-port" in options
    missing = [name for name in options if f"`{name}`" not in text]
    assert missing == []


def wait_for_status(run: DevRun, path: str, wanted: str) -> dict[str, object]:
    deadline = time.monotonic() + 30
    shown: dict[str, object] = {}
    while time.monotonic() < deadline:
        _, shown = run.api("GET", path)
        if shown["status"] == wanted:
            return shown
        time.sleep(0.2)
    pytest.fail(f"{path} not {wanted} in 30 s: {shown}\n{run.output()[-3000:]}")


@pytest.mark.e2e
def test_the_try_it_block_works_pasted_after_make_run(
        launch: Callable[..., DevRun]) -> None:  # noqa: F811
    run = launch()
    result = subprocess.run(["bash", "-eu", "-c", try_it()], cwd=run.workdir,
                            env=clean_environ() | {"PORT": str(run.port)},
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    message, code, campaign = (json.loads(line) for line in result.stdout.splitlines())
    assert (message["status"], code["status"], campaign["status"]) == ("queued",) * 3, result
    assert campaign["total"] == 2

    wait_for_status(run, f"/api/messages/{message['id']}", "sent")
    wait_for_status(run, f"/api/otp/{code['id']}", "sent")
    wait_for_status(run, f"/api/campaigns/{campaign['id']}", "completed")
    captured = [path.read_text() for path in (run.workdir / "var" / "outbox").glob("*.eml")]
    subjects = sorted(line for text in captured for line in text.splitlines()
                      if line.startswith("Subject: Hello "))
    assert subjects == ["Subject: Hello Ada", "Subject: Hello Bob"]
    assert any(re.search(r"\b\d{6}\b", text) and "X-Envelope-To: ada@example.com" in text
               for text in captured if "Subject: Hello" not in text and "Subject: Hi" not in text)
    run.wait_for(rf"campaign {campaign['id']} batch 0-1: 2 sent, 0 deferred, 0 failed in")
