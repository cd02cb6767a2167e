"""`kiln ci init --promote staging:production`: deploy to staging on every push, promote
to production on a v* tag or an approval; real linters accept both pipelines."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from test_ci_init import AWS_APP, LOCAL_APP, Lint, SchemaCheck, app_in_repo, load

if TYPE_CHECKING:
    from kilntest import Kiln

ENVIRONMENTS = "\n[environments.staging]\n\n[environments.production]\nrequire = 'staging'\n"


@pytest.mark.parametrize("provider", ["aws", "local"])
def test_github_deploys_staging_and_promotes_behind_the_production_environment(
    kiln: Kiln, actionlint: Lint, schema_check: SchemaCheck, provider: str
) -> None:
    config = (AWS_APP if provider == "aws" else LOCAL_APP) + ENVIRONMENTS
    repo = app_in_repo(kiln, "services/shop", config)
    kiln("ci", "init", "github", "--provider", provider, "--promote", "staging:production")
    path = repo / ".github/workflows/deploy.yml"
    assert actionlint(path) == []
    checked = schema_check("github-workflows", path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    flow = load(path)
    assert flow["on"]["push"] == {"branches": ["**"], "tags": ["v*"]}
    deploy, promote = flow["jobs"]["deploy"], flow["jobs"]["promote"]
    assert deploy["environment"] == "staging"
    assert deploy["concurrency"]["group"] == "kiln-deploy-shop-staging"
    runs = [step.get("run", "") for step in deploy["steps"]]
    assert any("kiln bake" in r and "--env staging" in r for r in runs)
    assert any(r.startswith(f"kiln deploy --provider {provider} --env staging") for r in runs)
    assert promote["environment"] == "production"  # required reviewers: the approval
    assert promote["needs"] == ["test", "deploy"]
    assert "startsWith(github.ref, 'refs/tags/v')" in promote["if"]
    assert promote["concurrency"]["group"] == "kiln-deploy-shop-production"
    promote_runs = [step.get("run", "") for step in promote["steps"]]
    assert f"kiln promote staging production --provider {provider} --json" in " ".join(promote_runs)
    assert not any("kiln bake" in r for r in promote_runs), "promotion never bakes"
    if provider == "aws":  # the daily refresh: staging's, in staging's group
        refresh = flow["jobs"]["refresh"]
        assert refresh["concurrency"] == deploy["concurrency"]
        assert refresh["steps"][-1]["run"] == "kiln refresh --provider aws --env staging"


@pytest.mark.parametrize("provider", ["aws", "local"])
def test_gitlab_promotes_by_hand_or_on_a_tag(
    kiln: Kiln, schema_check: SchemaCheck, provider: str
) -> None:
    config = (AWS_APP if provider == "aws" else LOCAL_APP) + ENVIRONMENTS
    repo = app_in_repo(kiln, ".", config)
    kiln("ci", "init", "gitlab", "--provider", provider, "--promote", "staging:production")
    path = repo / ".gitlab-ci.yml"
    checked = schema_check("gitlab-ci", path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    pipeline = load(path)
    assert pipeline["stages"] == ["test", "deploy", "promote"]
    assert pipeline["deploy"]["environment"] == "staging"
    assert "--env staging" in " ".join(pipeline["deploy"]["script"])
    promote = pipeline["promote"]
    assert promote["stage"] == "promote" and promote["environment"] == "production"
    assert promote["rules"][0] == {"if": "$CI_COMMIT_TAG =~ /^v/"}
    assert promote["rules"][1]["when"] == "manual"
    assert promote["resource_group"] == "kiln-deploy-shop-production"
    assert any(
        line.startswith(f"kiln promote staging production --provider {provider}")
        for line in promote["script"]
    )
    assert ("tags" in promote) == (provider == "local")
    if provider == "aws":
        assert pipeline["refresh"]["resource_group"] == pipeline["deploy"]["resource_group"]
        assert pipeline["refresh"]["script"][-1] == "kiln refresh --provider aws --env staging"


def test_promote_names_environments_kiln_toml_has(kiln: Kiln) -> None:
    app_in_repo(kiln, ".", AWS_APP + ENVIRONMENTS)
    wrong = kiln("ci", "init", "github", "--promote", "staging:prod", ok=False)
    assert wrong.exit_code != 0
    assert "--promote names prod, not in kiln.toml's [environments] (production, staging)" in (
        wrong.stderr
    )
    shape = kiln("ci", "init", "github", "--promote", "staging", ok=False)
    assert "--promote 'staging' is not FROM:TO" in shape.stderr


def test_without_promote_the_pipeline_has_no_environments(kiln: Kiln) -> None:
    repo = app_in_repo(kiln, ".", AWS_APP + ENVIRONMENTS)
    kiln("ci", "init", "github")
    flow = load(repo / ".github/workflows/deploy.yml")
    assert "promote" not in flow["jobs"] and "environment" not in flow["jobs"]["deploy"]
    assert flow["on"]["push"] is None
