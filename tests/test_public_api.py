"""The library surface other code may import: declared with ``__all__``, and every name real.

Also pins the deploy vocabulary as StrEnums whose values are what the journal and
``--json`` have always said, so old state databases and scripts keep reading.
"""

from __future__ import annotations

import importlib

import pytest

PUBLIC = ["kiln.deploy", "kiln.errors", "kiln.platform", "kiln.providers.protocol"]


@pytest.mark.parametrize("name", PUBLIC)
def test_public_modules_declare_what_they_export(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert exported, name
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"
    assert len(set(exported)) == len(exported)


def test_deploy_vocabulary_values_are_the_journaled_strings() -> None:
    from kiln.deploy import DeploymentKind, EventKind, Outcome, StepKind

    assert [o.value for o in Outcome] == [
        "running",
        "interrupted",
        "succeeded",
        "rolled back",
        "failed",
        "unchanged",
    ]
    assert {k.value for k in StepKind} == {"launch", "terminate", "switch", "canary", "retire"}
    assert {k.value for k in EventKind} == {"info", "warning", "step", "progress", "trip"}
    assert {"deploy", "rollback", "scale", "destroy", "recycle", "drift", "refresh"} <= {
        k.value for k in DeploymentKind
    }


def test_a_journaled_deployment_reads_back_typed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from kiln.deploy import DeploymentKind, Outcome, Plan, StateDb, Step, StepKind
    from kiln.deploy.journal import Journal, Who

    db = StateDb(tmp_path / "state.db")
    journal = Journal(db)
    plan = Plan("web", "rolling", None, "img-1", 1, (Step(StepKind.LAUNCH, image="img-1"),))
    dep = journal.create(plan, DeploymentKind.DEPLOY, Who("u", "h"), None, 1.0)
    journal.finish(dep.id, Outcome.ROLLED_BACK, "gate", {}, 2.0)
    back = journal.get(dep.id)
    assert back.outcome is Outcome.ROLLED_BACK
    assert back.kind is DeploymentKind.DEPLOY
    assert back.plan.steps[0].kind is StepKind.LAUNCH
    assert back.to_json()["outcome"] == "rolled back"
