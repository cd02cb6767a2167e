"""What a leaked key could destroy: a walk over a policy document's statements.

moto evaluates neither resource ARNs nor conditions, so whether the scoped
policy lets a key delete something kiln did not create can only be shown on
the document itself. The model:

- a *foreign* resource exists, untagged, created by someone else;
- a statement that writes tags (``ec2:CreateTags``, ``autoscaling:CreateOrUpdateTags``)
  without ``ec2:CreateAction`` can tag existing resources of its ARN types,
  when the resource already carries every ``ResourceTag`` key it requires,
  with the keys its ``aws:TagKeys`` allows (any key when unguarded);
  with ``ec2:CreateAction`` it tags only what the same request creates;
- repeat until nothing new is reachable (a sequence of calls);
- every destructive statement (delete, terminate, deregister, stop, detach,
  update, modify) must then still need a tag no sequence can put on a foreign
  resource, or name its resources exactly (no wildcard), or lie wholly under a
  path kiln reserves for what it writes itself (``RESERVED``: the release runners'
  results under the SSM path ``/kiln/oneoff/`` and alarms named ``kiln-*``, which
  docs/aws.md reserves).

It is deliberately pessimistic: a tag key pattern counts as obtained for every
value, and a statement whose ARNs match a type counts for all of that type.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from typing import Any

import parliament

TAG_WRITERS = {"ec2:CreateTags", "autoscaling:CreateOrUpdateTags"}
DESTRUCTIVE = re.compile(
    r":(Delete|Terminate|Deregister|Stop|Detach|Update|Modify|CreateLaunchTemplateVersion"
    r"|SendCommand)"
)
_RESOURCE_TAG = re.compile(
    r"^(?:ec2|autoscaling|aws|elasticloadbalancing|ssm):[Rr]esourceTag/(.+)$"
)


# SSM parameters under /kiln/oneoff/ are kiln's by contract: the release runner (its
# instance role) writes its result there and the deployer reads and deletes it; so are
# CloudWatch alarms named kiln-* (a carried scaling policy's, kiln.aws.alarms)
RESERVED = re.compile(
    r"^arn:[^:]+:(ssm:[^:]*:[^:]*:parameter/kiln/(oneoff/|\*/packages)"
    r"|cloudwatch:[^:]*:[^:]*:alarm:kiln-)"
)  # release results; AMIs' package lists (kiln.aws.packages); alarms of kiln's groups


@dataclass(frozen=True)
class Statement:
    sid: str
    actions: tuple[str, ...]
    types: tuple[str, ...]  # "ec2:instance", "autoscaling:autoScalingGroup", "*"
    exact: bool  # every resource ARN names one resource (no wildcard in its id)
    reserved: bool  # every resource ARN lies under a path kiln reserves (RESERVED)
    needs_tags: frozenset[str]  # ResourceTag keys the resource must already carry
    on_create_only: bool  # ec2:CreateAction present: tags only what the call creates
    tag_keys: tuple[str, ...]  # aws:TagKeys patterns allowed; ("*",) when unguarded

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Statement:
        assert raw["Effect"] == "Allow", raw  # a Deny would need a richer model
        actions = raw["Action"] if isinstance(raw["Action"], list) else [raw["Action"]]
        resources = raw["Resource"] if isinstance(raw["Resource"], list) else [raw["Resource"]]
        condition = raw.get("Condition", {})
        needs: set[str] = set()
        on_create = False
        keys: list[str] = []
        for operator, block in condition.items():
            for key, value in block.items():
                match = _RESOURCE_TAG.match(key)
                if match:
                    needs.add(match.group(1))
                elif key == "ec2:CreateAction":
                    on_create = True
                elif key == "aws:TagKeys":
                    assert operator.startswith("ForAllValues:"), (raw["Sid"], operator)
                    keys += value if isinstance(value, list) else [value]
        return cls(
            sid=raw["Sid"],
            actions=tuple(actions),
            types=tuple(_type(arn) for arn in resources),
            exact=all(arn != "*" and "*" not in arn.rpartition("/")[2] for arn in resources),
            reserved=all(RESERVED.match(arn) for arn in resources),
            needs_tags=frozenset(needs),
            on_create_only=on_create,
            tag_keys=tuple(keys) or ("*",),
        )

    def covers(self, kind: str) -> bool:
        return any(t in ("*", kind) for t in self.types)


def _type(arn: str) -> str:
    """``arn:aws:ec2:r:a:instance/*`` -> ``ec2:instance``; ``*`` stays ``*``."""
    if arn == "*":
        return "*"
    parts = arn.split(":", 5)
    service, rest = parts[2], parts[5]
    return f"{service}:{re.split(r'[/:]', rest, maxsplit=1)[0]}"


@dataclass(frozen=True)
class Finding:
    sid: str
    action: str
    kind: str
    why: str


def obtainable_tags(statements: list[Statement]) -> dict[str, set[str]]:
    """Tag-key patterns a key can put on a *foreign* resource of each type, by any sequence."""
    kinds = {t for s in statements for t in s.types} - {"*"}
    got: dict[str, set[str]] = {k: set() for k in kinds}
    changed = True
    while changed:
        changed = False
        for s in statements:
            if s.on_create_only or not TAG_WRITERS & set(s.actions):
                continue
            for kind in kinds:
                if not s.covers(kind):
                    continue
                if not all(_has(got[kind], key) for key in s.needs_tags):
                    continue
                new = set(s.tag_keys) - got[kind]
                if new:
                    got[kind] |= new
                    changed = True
    return got


def _has(patterns: set[str], key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def reachable_destruction(document: dict[str, Any]) -> list[Finding]:
    """Every (statement, action, type) that could destroy a foreign resource."""
    statements = [Statement.parse(s) for s in document["Statement"]]
    got = obtainable_tags(statements)
    findings: list[Finding] = []
    for s in statements:
        for action in s.actions:
            if not DESTRUCTIVE.search(action):
                continue
            for kind in s.types:
                if s.exact or s.reserved:
                    continue  # names one resource (e.g. the configured target group)
                if not s.needs_tags:
                    findings.append(Finding(s.sid, action, kind, "no tag required"))
                elif all(_has(got.get(kind, set()), k) for k in s.needs_tags):
                    why = f"{sorted(s.needs_tags)} can be put on a foreign {kind} first"
                    findings.append(Finding(s.sid, action, kind, why))
    return findings


# CreateImage needs two statements: the source instance must be kiln's builder
# (ResourceTag), while the new image and snapshot have no tags to check yet.
# parliament wants every resource type of an action in each statement that names
# it, so it reports each half; the pair together covers all three (asserted).
# SendCommand too: the AWS-owned document, untagged, and kiln's tagged builder.
SPLIT_ACTIONS = {
    "ec2:CreateImage": {"ec2:instance", "ec2:image", "ec2:snapshot"},
    "ssm:SendCommand": {"ssm:document", "ec2:instance"},
}
# ModifyListener acts on ALB and NLB listeners; parliament wants both types in a
# statement naming it, and kiln's names one ALB listener (listener_arn) only.
ALB_ONLY_ACTIONS = {"elasticloadbalancing:ModifyListener"}


def lint(document: dict[str, Any], *, community: bool) -> list[tuple[str, Any, Any]]:
    """parliament's findings, less the documented split above (checked, not ignored)."""
    findings = parliament.analyze_policy_string(
        json.dumps(document), include_community_auditors=community
    ).findings
    kept = []
    for finding in findings:
        split = finding.issue == "RESOURCE_MISMATCH" and all(
            d["action"] in SPLIT_ACTIONS for d in finding.detail
        )
        alb_only = finding.issue == "RESOURCE_MISMATCH" and all(
            d["action"] in ALB_ONLY_ACTIONS for d in finding.detail
        )
        if alb_only:  # accepted only for a statement naming ALB listeners exactly
            for statement in document["Statement"]:
                if "elasticloadbalancing:ModifyListener" in statement["Action"]:
                    arns = statement["Resource"]
                    for arn in [arns] if isinstance(arns, str) else arns:
                        if ":listener/" in arn:
                            assert ":listener/app/" in arn and "*" not in arn, arn
        if not (split or alb_only):
            kept.append((finding.issue, finding.detail, finding.location))
    for action, expected in SPLIT_ACTIONS.items():
        kinds = {
            _type(arn)
            for s in document["Statement"]
            if action in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])
            for arn in (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])
        }
        if kinds:
            assert kinds == expected, (action, kinds)
    return kept
