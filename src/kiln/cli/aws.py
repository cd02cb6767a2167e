"""``kiln aws``: the deploy user, its policy, and cleaning up after killed bakes.

``kiln bake/images/prune --provider aws`` live with their local siblings and
call :mod:`kiln.aws.ami` and :mod:`kiln.aws.images`.
"""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from kiln.aws import policy as iam_policy
from kiln.aws.iam import DeployUser, create_deploy_user
from kiln.aws.reap import reap
from kiln.aws.session import Aws, aws_errors, connect
from kiln.cli.app import State, cli, environment_option, pass_state
from kiln.cli.output import console, emit_json, note
from kiln.config import AwsSettings
from kiln.errors import AwsError


def aws_settings(state: State) -> AwsSettings:
    """[provider.aws] from kiln.toml when there is one; defaults and env otherwise."""
    from kiln.aws.platform import AwsPlatform

    return AwsPlatform(state.home(), state.config, has_config=state.has_config()).settings()


def _sticky(state: State) -> str | None:
    """[fleet] sticky, when kiln.toml sets it: the scaling policy may then set stickiness."""
    return state.config().config.fleet.sticky if state.has_config() else None


@cli.group("aws")
def aws_group() -> None:
    """AWS provider: deploy user and policy, leftovers of killed bakes."""


@aws_group.command("policy")
@click.option("--json", "as_json", is_flag=True, help="Print the policy document(s) only.")
@click.option(
    "--part",
    type=click.Choice(sorted(iam_policy.PARTS)),
    help="One managed policy: bake (bake, images, prune, reap), deploy, scaling (what new "
    "server groups inherit, the instance role's PassRole) or publish (copies, sharing). "
    "Default: every one kiln.toml needs.",
)
@click.option("--account", metavar="ID", help="Account id for resource ARNs (default: ask STS).")
@click.option("--region", metavar="NAME", help="Region the policy is scoped to.")
@click.option("--partition", default="aws", show_default=True, help="aws, aws-cn, aws-us-gov.")
@click.option(
    "--instance-role",
    is_flag=True,
    help="The fleet's instance role instead: its secrets, its release results (needs kiln.toml).",
)
@click.option(
    "--builder",
    is_flag=True,
    help="Instead: the role of builder_instance_profile (bake_via = 'ssm'), its trust "
    "and permissions documents.",
)
@environment_option
@pass_state
def policy_command(
    state: State,
    as_json: bool,
    part: str | None,
    account: str | None,
    region: str | None,
    partition: str,
    instance_role: bool,
    builder: bool,
) -> None:
    """Print the least-privilege IAM policies for exactly the calls kiln makes.

    --json --part NAME prints one document, ready for `aws iam create-policy`;
    --json alone prints {"bake": ..., "deploy": ..., "scaling": ...}. --instance-role prints
    what the fleet's instances need instead (read their secrets, report a release).
    --builder prints the SSM builder's role instead: {"trust": ..., "permissions": ...}.
    """
    if builder:
        _print_builder_role(as_json)
        return
    settings = aws_settings(state)
    aws = _maybe_connect(settings)
    region = region or (aws.region if aws else settings.region)
    if account is None and aws is not None:
        account = _account(aws)
    if instance_role:
        document = _instance_policy(state, settings, region, account, partition)
        _print_policies({"instance role": document}, region, as_json=as_json, single=True)
        return
    documents = {
        name: iam_policy.policy_document(
            region=region,
            account=account,
            partition=partition,
            purposes=purposes,
            **iam_policy.options(settings, _sticky(state)),
        )
        for name, purposes in iam_policy.PARTS.items()
        if part in (None, name)
    }
    if part is None:  # the publish policy only when kiln.toml asks for what it grants
        documents = {name: doc for name, doc in documents.items() if doc["Statement"]}
    _print_policies(documents, region, as_json=as_json, single=part is not None)


def _instance_policy(
    state: State, settings: AwsSettings, region: str | None, account: str | None, partition: str
) -> dict[str, Any]:
    """What the instances need: their [secrets]' SSM parameters, their release results."""
    from kiln.aws.install import secret_spec

    config = state.config().config
    spec = secret_spec(config, settings)
    return iam_policy.instance_policy_document(
        app=config.app.name,
        parameters=[ref.removeprefix("ssm:") for ref in spec.values() if ref.startswith("ssm:")],
        region=region,
        account=account,
        partition=partition,
    )


def _print_policies(
    documents: dict[str, dict[str, Any]], region: str | None, *, as_json: bool, single: bool
) -> None:
    if as_json:
        emit_json(next(iter(documents.values())) if single else documents)
        return
    for name, document in documents.items():
        size = iam_policy.size(document)
        table = Table(
            title=f"kiln {name} policy ({region or 'any region'}, "
            f"{size}/{iam_policy.MANAGED_POLICY_MAX} characters)"
        )
        for column in ("Sid", "actions", "scoped by"):
            table.add_column(column, overflow="fold")
        for statement in document["Statement"]:
            scope = ", ".join(_condition_keys(statement.get("Condition", {}))) or "resource ARNs"
            actions = statement["Action"]
            table.add_row(
                statement["Sid"],
                "\n".join([actions] if isinstance(actions, str) else actions),
                scope,
            )
        console.print(table)
    console.print(
        "the documents: 'kiln aws policy --json [--part bake|deploy|scaling|publish "
        "| --instance-role]'",
        markup=False,
    )


def _print_builder_role(as_json: bool) -> None:
    documents = iam_policy.builder_role_documents()
    if as_json:
        emit_json(documents)
        return
    table = Table(title="the SSM builder's role (builder_instance_profile)")
    for column in ("document", "grants"):
        table.add_column(column, overflow="fold")
    table.add_row("trust", "ec2.amazonaws.com may assume it")
    table.add_row("permissions", "\n".join(iam_policy.BUILDER_AGENT_ACTIONS))
    console.print(table)
    console.print("the documents: 'kiln aws policy --builder --json'", markup=False)


def _maybe_connect(settings: AwsSettings) -> Aws | None:
    try:
        return connect(settings)
    except AwsError:
        return None


def _account(aws: Aws) -> str | None:
    if aws.session.get_credentials() is None:
        return None
    try:
        with aws_errors("asking STS for the account id"):
            return aws.sts.get_caller_identity()["Account"]
    except AwsError as exc:
        note(f"account id unknown ({exc}); ARNs use '*'")
        return None


def _condition_keys(condition: dict[str, dict[str, object]]) -> list[str]:
    return sorted({key for block in condition.values() for key in block})


@aws_group.command("create-deploy-user")
@click.option("--team", required=True, help="Team name: the user is deploy-user-TEAM.")
@click.option("--rotate-key", is_flag=True, help="Replace the access key with a new one.")
@click.option(
    "--bake-only",
    is_flag=True,
    help="Attach only the bake (and publish) policy: this user cannot deploy.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@environment_option
@pass_state
def create_deploy_user_command(
    state: State, team: str, rotate_key: bool, bake_only: bool, as_json: bool
) -> None:
    """Create the CI deploy user (programmatic access only) with kiln's policies.

    Run once with admin credentials. The secret key is printed once, here.
    """
    settings = aws_settings(state)
    aws = connect(settings)
    options = iam_policy.options(settings, _sticky(state))
    user = create_deploy_user(
        aws,
        team,
        rotate_key=rotate_key,
        parts=("bake", "publish") if bake_only else tuple(iam_policy.PARTS),
        pass_role=options.pop("pass_role"),
        target_group=options.pop("target_group"),
        boot_test_target_group=options.pop("boot_test_target_group"),
        listener=options.pop("listener"),
        ssm=options.pop("ssm"),
        builder_role=options.pop("builder_role"),
        sticky=options.pop("sticky"),
        canary_target_group=options.pop("canary_target_group"),
        hook_roles=options.pop("hook_roles"),
        publish=options,
    )
    if as_json:
        emit_json(user.summary())
        return
    _print_user(user)


def _print_user(user: DeployUser) -> None:
    verb = "created" if user.created else "exists:"
    policies = ", ".join(user.policies)
    console.print(f"{verb} {user.user} ({user.arn}), policies {policies}", markup=False)
    if user.policies_changed and not user.created:
        changed = ", ".join(user.policies_changed)
        console.print(f"policies updated to this kiln version's: {changed}", markup=False)
    if user.console_access_removed:
        console.print("console password removed: programmatic access only", markup=False)
    if user.deleted_keys:
        console.print(f"deleted old keys: {', '.join(user.deleted_keys)}", markup=False)
    if user.secret_access_key is None:
        console.print(
            f"access key {user.access_key_id} unchanged (its secret was shown when created; "
            "--rotate-key makes a new one)",
            markup=False,
        )
        return
    console.print("\nstore these as CI secrets now; the secret is not shown again:", markup=False)
    console.print(f"AWS_ACCESS_KEY_ID={user.access_key_id}", markup=False)
    console.print(f"AWS_SECRET_ACCESS_KEY={user.secret_access_key}", markup=False)


@aws_group.command("reap")
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@click.option(
    "--all", "include_unexpired", is_flag=True, help="Also remove resources not expired yet."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_state
def reap_command(state: State, dry_run: bool, include_unexpired: bool, as_json: bool) -> None:
    """Remove builders, key pairs and security groups left by killed bakes."""
    aws = connect(aws_settings(state))
    result = reap(
        aws, dry_run=dry_run, include_unexpired=include_unexpired, note=None if as_json else note
    )
    if as_json:
        emit_json(result.summary())
        return
    verb = "would remove" if dry_run else "removed"
    for item in result.removed:
        console.print(f"{verb} {item.kind} {item.id} (build {item.build_id})", markup=False)
    for item in result.kept:
        until = item.expires.isoformat() if item.expires else "?"
        console.print(f"kept {item.kind} {item.id}: in use until {until} (--all)", markup=False)
    if not result.removed and not result.kept:
        console.print("nothing to reap", markup=False)


__all__ = ["aws_group", "aws_settings"]
