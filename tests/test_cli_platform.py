"""The CLI chooses the platform once and delegates: no command asks which provider it runs on."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from kiln.errors import ConfigError
from kiln.home import Home
from kiln.platform import PLATFORM_NAMES, Capability, open_platform

CLI = Path(__file__).resolve().parents[1] / "src" / "kiln" / "cli"


def _provider_branches(path: Path) -> list[str]:
    """Comparisons of a provider name with a literal: `provider == "aws"` and the like."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        names = {o.id if isinstance(o, ast.Name) else getattr(o, "attr", None) for o in operands}
        literals = {o.value for o in operands if isinstance(o, ast.Constant)}
        if "provider" in names or literals & PLATFORM_NAMES:
            found.append(f"{path.name}:{node.lineno}")
    return found


def test_no_provider_branch_in_the_cli() -> None:
    branches = [b for path in sorted(CLI.glob("*.py")) for b in _provider_branches(path)]
    assert branches == []


def test_the_branch_finder_finds_a_branch(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text('if provider == "aws":\n    pass\nif "local" != where:\n    pass\n')
    assert _provider_branches(sample) == ["x.py:1", "x.py:3"]


def test_an_unsupported_feature_is_refused_in_one_place(home: Home) -> None:
    def no_config() -> None:
        raise AssertionError("not read")

    aws = open_platform("aws", home, no_config, has_config=False)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not available with --provider aws") as caught:
        aws.require(Capability.DRIFT_REPLACE, "kiln drift --replace")
    assert caught.value.hint == "it works with --provider local"
    local = open_platform("local", home, no_config, has_config=False)  # type: ignore[arg-type]
    for capability in Capability:
        if capability is not Capability.PACKAGES:  # an image here holds no OS packages
            local.require(capability, "anything")
    with pytest.raises(ConfigError, match="not available with --provider local") as refused:
        local.require(Capability.PACKAGES, "kiln image packages")
    assert refused.value.hint == "it works with --provider aws"


def test_aws_runs_release_commands_and_one_off_commands(home: Home) -> None:
    """On runner instances: tests/aws_deploy/test_aws_release.py, tests/aws/test_aws_oneoff.py."""

    def no_config() -> None:
        raise AssertionError("not read")

    aws = open_platform("aws", home, no_config, has_config=False)  # type: ignore[arg-type]
    aws.require(Capability.RELEASE, "[app] release")
    aws.require(Capability.RUN, "kiln run")


def test_a_health_host_is_refused_on_aws_before_anything_is_baked(
    home: Home, tmp_path: Path
) -> None:
    """kiln init writes [health] host for a Django project answering only its public
    names; ALB checks cannot send it, so on AWS every target would fail its checks."""
    from kiln.config import load_config

    config = tmp_path / "kiln.toml"
    config.write_text(
        '[app]\nname = "web"\nrun = "python3 app.py"\n'
        '[health]\npath = "/health"\nhost = "www.example.com"\n'
    )
    aws = open_platform("aws", home, lambda: load_config(config))
    with pytest.raises(ConfigError, match=r"\[health\] host is not available") as refused:
        aws.deployer()
    assert refused.value.hint is not None and "ALLOWED_HOSTS" in refused.value.hint
    with pytest.raises(ConfigError, match=r"\[health\] host is not available"):
        aws.bake(lambda *_: None, lambda _: None)  # type: ignore[arg-type]
    open_platform("local", home, lambda: load_config(config)).require(
        Capability.HEALTH_HOST, "[health] host"
    )


def test_image_ages_warn_once_over_max_image_age() -> None:
    """What every platform's status adds: ages, and 'kiln refresh' due past the maximum."""
    from kiln.platform import image_ages

    fresh = image_ages(3600.0, 86400.0 * 40, 86400.0 * 30)
    assert (fresh["image_age"], fresh["base_age"], fresh["image_due"]) == (3600.0, 3456000.0, False)
    assert "warnings" not in fresh
    old = image_ages(86400.0 * 31, None, 86400.0 * 30)
    assert old["image_due"] and old["warnings"] == [
        "the image is 31d old, over [fleet] max_image_age (30d): 'kiln refresh' is due"
    ]
    assert not image_ages(None, None, 60.0)["image_due"]
    assert not image_ages(86400.0 * 365, None, None)["image_due"]
