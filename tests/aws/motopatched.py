"""``moto_server`` with the AWS behaviour kiln relies on that moto 5.2 lacks.

- ``CreateImage`` with a ``snapshot`` TagSpecification tags every snapshot the
  image gets (AWS documents it; moto raises NotImplementedError). kiln tags
  its snapshots that way so a bake killed mid-wait leaves nothing prune
  cannot delete.
- ``DeleteLaunchTemplateVersions`` (moto has no such action): the versions
  are gone from every later describe; numbering and the default are kept.
- Percentile statistics (``p99``) in ``GetMetricData``: moto returns none; here
  the nearest-rank percentile of the raw values put in the period (AWS
  estimates percentiles; with raw values put one by one the two agree).

Nothing else changes.

    python motopatched.py -H 127.0.0.1 -p PORT
"""

from __future__ import annotations

import math
import sys
from typing import Any

from moto.cloudwatch.models import Statistics
from moto.core.responses import ActionResult
from moto.ec2.models.amis import AmiBackend
from moto.ec2.models.launch_templates import LaunchTemplateBackend
from moto.ec2.responses.launch_templates import LaunchTemplates
from moto.server import main

_create_image = AmiBackend.create_image


def create_image(
    self: Any, instance_id: str, name: str, description: str, tag_specifications: list[Any]
) -> Any:
    snapshot_tags = [
        tag
        for spec in tag_specifications
        if spec["ResourceType"] == "snapshot"
        for tag in spec.get("Tags", [])
    ]
    others = [spec for spec in tag_specifications if spec["ResourceType"] != "snapshot"]
    ami = _create_image(self, instance_id, name, description, others)
    for tag in snapshot_tags:  # moto gives an image one snapshot
        ami.ebs_snapshot.add_tag(tag["Key"], tag["Value"])
    return ami


AmiBackend.create_image = create_image  # type: ignore[method-assign]

_describe_versions = LaunchTemplateBackend.describe_launch_template_versions


def describe_launch_template_versions(self: Any, *args: Any, **kwargs: Any) -> Any:
    found = _describe_versions(self, *args, **kwargs)
    return [(t, v) for t, v in found if not getattr(v, "kiln_deleted", False)]


def delete_launch_template_versions(self: Any) -> Any:
    """EC2's DeleteLaunchTemplateVersions: any version but the default."""
    template = self.ec2_backend.get_launch_template_by_name(self._get_param("LaunchTemplateName"))
    deleted, refused = [], []
    for number in self._get_param("Versions", []):
        version = template.versions[int(number) - 1]
        entry = {"LaunchTemplateName": template.name, "VersionNumber": int(number)}
        if template.is_default(version):
            refused.append({**entry, "ResponseError": {"Code": "launchTemplateVersionIsDefault"}})
            continue
        version.kiln_deleted = True
        deleted.append(entry)
    return ActionResult(
        {
            "SuccessfullyDeletedLaunchTemplateVersions": deleted,
            "UnsuccessfullyDeletedLaunchTemplateVersions": refused,
        }
    )


LaunchTemplateBackend.describe_launch_template_versions = describe_launch_template_versions  # type: ignore[method-assign]
LaunchTemplates.delete_launch_template_versions = delete_launch_template_versions  # type: ignore[attr-defined]

_statistic = Statistics.get_statistics_for_type


def get_statistics_for_type(self: Any, stat: str) -> Any:
    if not (stat.startswith("p") and stat[1:].replace(".", "", 1).isdigit()):
        return _statistic(self, stat)
    values = sorted(self.metric_single_values_list)
    if not values:
        return None
    rank = math.ceil(float(stat[1:]) / 100 * len(values))
    return values[max(0, rank - 1)]


Statistics.get_statistics_for_type = get_statistics_for_type  # type: ignore[method-assign]

if __name__ == "__main__":
    main(sys.argv[1:])
