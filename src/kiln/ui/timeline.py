"""Deployments as bars over time: each step with when it began and ended.

Locally the journal has every step (written before each acts), so a running
deployment shows which step it is on. On AWS history keeps one record per
operation (launch-template version descriptions, 255 characters), so its
deployments have no steps.
"""

from __future__ import annotations

from typing import Any

from kiln.deploy.journal import Deployment, Journal
from kiln.deploy.plan import Plan


def deployment_timeline(journal: Journal, dep: Deployment) -> dict[str, Any]:
    """One deployment: its record, plus its steps (both phases) with their times."""
    entries = journal.entries(dep.id)
    plans: dict[str, Plan | None] = {"forward": dep.plan, "rollback": dep.rollback_plan}
    steps: list[dict[str, Any]] = []
    for phase, plan in plans.items():
        if plan is None:
            continue
        for index, step in enumerate(plan.steps):
            begun = [e["at"] for e in entries if _is(e, phase, index, "begin")]
            done = [e["at"] for e in entries if _is(e, phase, index, "done")]
            steps.append(
                {
                    "phase": phase,
                    "kind": step.kind,
                    "what": step.describe(),
                    "began": begun[0] if begun else None,
                    "done": done[-1] if done else None,
                }
            )
    trip = next((e for e in entries if e["event"] == "trip"), None)
    figures = dep.figures or {}
    return {
        **dep.to_json(),
        "steps": steps,
        "gate": figures.get("gate"),
        "tripped_at": trip["at"] if trip else None,
        "log_tail": figures.get("log_tail"),
        "instance": figures.get("instance"),
    }


def _is(entry: dict[str, Any], phase: str, step: int, event: str) -> bool:
    return bool(entry["phase"] == phase and entry["step"] == step and entry["event"] == event)
