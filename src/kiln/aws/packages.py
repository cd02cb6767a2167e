"""An AMI's package list, kept beside it in SSM Parameter Store: compact and queryable.

``install.sh`` prints the builder's packages (``dpkg-query -W`` or ``rpm -qa``)
at the end of the bake's SSH session; kiln stores them, zlib-compressed and
base64-encoded, in standard-tier String parameters of at most 4,096
characters each (free, no extra resource to own):
``/kiln/<app>/amis/<ami-id>/packages/00``, ``/01``, … (a Debian cloud image's
~450 packages take two). ``kiln image packages`` reads them back; pruning an
AMI deletes them with it.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Sequence

from kiln.aws.session import Aws, aws_errors
from kiln.errors import AwsError

CHUNK = 4096  # a standard-tier parameter's largest value
PREFIX = "/kiln"

Packages = list[tuple[str, str]]


def packages_path(app: str, ami: str) -> str:
    return f"{PREFIX}/{app}/amis/{ami}/packages"


def encode(packages: Sequence[tuple[str, str]]) -> list[str]:
    """``name<TAB>version`` lines, compressed, base64, cut into parameter-sized chunks."""
    text = "".join(f"{name}\t{version}\n" for name, version in packages)
    blob = base64.b64encode(zlib.compress(text.encode(), 9)).decode()
    return [blob[i : i + CHUNK] for i in range(0, len(blob), CHUNK)]


def decode(chunks: Sequence[str]) -> Packages:
    blob = "".join(chunks)
    if not blob:
        return []
    try:
        text = zlib.decompress(base64.b64decode(blob, validate=True)).decode()
    except (ValueError, zlib.error) as exc:
        raise AwsError(f"the stored package list is damaged: {exc}") from None
    pairs = (line.split("\t", 1) for line in text.splitlines())
    return [(p[0], p[1]) for p in pairs if len(p) == 2]


def store_packages(aws: Aws, app: str, ami: str, packages: Sequence[tuple[str, str]]) -> int:
    """Write the list beside ``ami``; how many parameters it took."""
    ssm = aws.client("ssm")
    base = packages_path(app, ami)
    chunks = encode(packages)
    with aws_errors(f"recording the package list of {ami}"):
        for number, chunk in enumerate(chunks):
            ssm.put_parameter(
                Name=f"{base}/{number:02d}",
                Value=chunk,
                Type="String",
                Tier="Standard",
                Overwrite=True,
                Description=f"kiln: packages of {ami} ({len(packages)}), part {number + 1}",
            )
    return len(chunks)


def _names(aws: Aws, app: str, ami: str) -> dict[str, str]:
    paginator = aws.client("ssm").get_paginator("get_parameters_by_path")
    found: dict[str, str] = {}
    with aws_errors(f"reading the package list of {ami}"):
        for page in paginator.paginate(Path=packages_path(app, ami), Recursive=False):
            found.update({str(p["Name"]): str(p["Value"]) for p in page["Parameters"]})
    return found


def read_packages(aws: Aws, app: str, ami: str) -> Packages | None:
    """The list recorded for ``ami``, or None when none was (baked before kiln kept them)."""
    found = _names(aws, app, ami)
    if not found:
        return None
    return decode([found[name] for name in sorted(found)])


def delete_packages(aws: Aws, app: str, ami: str) -> None:
    """Forget the list with its AMI (prune, a failed AMI deregistered)."""
    names = sorted(_names(aws, app, ami))
    ssm = aws.client("ssm")
    with aws_errors(f"deleting the package list of {ami}"):
        for start in range(0, len(names), 10):  # DeleteParameters takes 10 at a time
            ssm.delete_parameters(Names=names[start : start + 10])
