"""``moto_server`` with the one AWS behaviour kiln relies on that moto 5.2 lacks.

``CreateImage`` with a ``snapshot`` TagSpecification tags every snapshot the
image gets (AWS documents it; moto raises NotImplementedError). kiln tags its
snapshots that way so a bake killed mid-wait leaves nothing prune cannot
delete, so the tests run moto with that behaviour added, nothing else changed.

    python motopatched.py -H 127.0.0.1 -p PORT
"""

from __future__ import annotations

import sys
from typing import Any

from moto.ec2.models.amis import AmiBackend
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

if __name__ == "__main__":
    main(sys.argv[1:])
