"""The alert rules in deploy/prometheus: valid, each unit-tested with promtool, each with a runbook.

``promtool`` (Debian's ``prometheus`` package; ``make prometheus-tool`` installs it as root)
checks deploy/prometheus/alerts.yml and runs the cases in alerts_test.yml: one of three bulk
workers dead, a frozen bulk lane within 3 minutes, a queue without a consumer, the scrape
target down, relay down, failure/deferral and webhook rates, reconciler re-enqueues, and the
same figures whether one replica or two is scraped.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.support.paths import ROOT

RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
RUNBOOK = ROOT / "docs" / "RUNBOOK.md"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is missing: `make prometheus-tool` installs Debian's "
    "prometheus package (needs root and apt-get)")


def alert_rules() -> list[dict[str, object]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"] if "alert" in rule]


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of *markdown*."""
    found = set()
    for heading in re.findall(r"^#+\s+(.+?)\s*$", markdown, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        found.add(slug)
    return found


def test_every_alert_links_a_runbook_section_that_says_what_to_do() -> None:
    runbook = RUNBOOK.read_text()
    known = anchors(runbook)
    rules = alert_rules()
    assert len(rules) >= 12
    for rule in rules:
        url = rule["annotations"]["runbook_url"]  # type: ignore[index]
        path, _, anchor = str(url).partition("#")
        assert path == "docs/RUNBOOK.md", url
        assert anchor == str(rule["alert"]).lower() and anchor in known, url
        section = runbook.split(f"## {rule['alert']}\n", 1)[1].split("\n## ", 1)[0]
        for part in ("**What it means**", "**What to look at**", "**What to do**"):
            assert part in section, (rule["alert"], part)


def test_every_alert_has_a_unit_test_case() -> None:
    cases = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    tested = {check["alertname"] for case in cases for check in case["alert_rule_test"]
              if check["exp_alerts"]}
    assert {str(rule["alert"]) for rule in alert_rules()} <= tested


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    run = subprocess.run([str(PROMTOOL), "check", "rules", str(RULES)],
                         capture_output=True, text=True, timeout=30, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in run.stdout


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    run = subprocess.run([str(PROMTOOL), "test", "rules", str(RULE_TESTS)],
                         capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout + run.stderr
