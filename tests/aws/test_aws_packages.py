"""An AMI's package list in SSM: chunked to the standard tier's size, read back whole."""

from __future__ import annotations

import pytest

from kiln.aws.packages import (
    CHUNK,
    decode,
    delete_packages,
    encode,
    read_packages,
    store_packages,
)
from kiln.aws.session import Aws
from kiln.errors import AwsError

pytestmark = pytest.mark.aws


def test_a_long_list_takes_several_standard_parameters_and_comes_back_whole(aws: Aws) -> None:
    # hex names compress badly: this list needs more than one 4,096-character parameter
    packages = [
        (f"lib{n:05x}-{n * 7919 % 65521:04x}", f"{n}.{n % 7}-{n % 13}") for n in range(3000)
    ]
    parts = store_packages(aws, "shop", "ami-0123456789abcdef0", packages)
    assert parts > 1 and all(len(c) <= CHUNK for c in encode(packages))
    assert read_packages(aws, "shop", "ami-0123456789abcdef0") == packages
    assert read_packages(aws, "shop", "ami-00000000000000000") is None  # none recorded

    delete_packages(aws, "shop", "ami-0123456789abcdef0")
    assert read_packages(aws, "shop", "ami-0123456789abcdef0") is None


def test_a_damaged_list_is_one_line() -> None:
    assert decode(encode([("dpkg", "1.21.22")])) == [("dpkg", "1.21.22")]
    with pytest.raises(AwsError, match="package list is damaged"):
        decode(["not base64 at all!"])
