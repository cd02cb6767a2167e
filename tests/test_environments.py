"""[environments.NAME]: one kiln.toml, a fleet per environment, the same code in each.

Config merging and its one-line errors, and the code digest: an image minus
its env layer, equal for staging's and production's images of the same code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.config import parse_config
from kiln.errors import ConfigError
from kiln.image.store import FileEntry, Manifest
from kilntest import Kiln

BASE = """
[app]
name = "shop"
run = "python3 app.py"

[env]
GREETING = "hello"
MODE = "base"

[fleet]
size = 2
max_unavailable = 1

[provider.local]
listen = "127.0.0.1:8080"
hosts = ["shop.example.com"]
"""

ENVIRONMENTS = """
[environments.staging]
env = { MODE = "staging", EXTRA = "1" }
fleet = { size = 1, max_surge = 0 }
provider.local = { listen = "127.0.0.1:8081" }
secrets = { TOKEN = "env:STAGING_TOKEN" }

[environments.production]
require = "staging"
fleet = { size = 3 }
"""


def test_an_environment_overrides_only_the_keys_it_sets() -> None:
    config = parse_config(BASE + ENVIRONMENTS)
    staging = config.for_environment("staging")
    assert staging.environment == "staging" and staging.fleet_name == "shop-staging"
    assert staging.env == {"GREETING": "hello", "MODE": "staging", "EXTRA": "1"}
    assert (staging.fleet.size, staging.fleet.max_surge, staging.fleet.max_unavailable) == (1, 0, 1)
    assert staging.provider.local.listen == "127.0.0.1:8081"
    assert staging.provider.local.hosts == ["shop.example.com"]  # not overridden: inherited
    assert staging.secrets == {"TOKEN": "env:STAGING_TOKEN"}
    production = config.for_environment("production")
    assert production.fleet_name == "shop-production"
    assert production.env == config.env and production.fleet.size == 3
    assert production.provider.local.listen == "127.0.0.1:8080"
    assert config.environments["production"].require == "staging"


def test_without_an_environment_the_file_is_what_it_always_was() -> None:
    config = parse_config(BASE + ENVIRONMENTS)
    assert config.for_environment(None) is config
    assert config.environment is None and config.fleet_name == "shop"
    assert config.env == {"GREETING": "hello", "MODE": "base"} and config.fleet.size == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "[environments.staging]\nfleet = { sise = 1 }\n",
            "[environments.staging]: fleet.sise: unknown key (did you mean 'size'?)",
        ),
        (
            "[environments.staging]\nfleet = { max_surge = 0, max_unavailable = 0 }\n",
            "[environments.staging]: fleet: max_surge and max_unavailable cannot both be 0",
        ),
        (
            "[environments.staging]\nfleet = { size = 0 }\n",
            "[environments.staging]: [fleet] size: must be at least 1, not 0",
        ),
        ("[environments.staging]\nprovider.gcp = { zone = 'x' }\n", "provider.gcp: unknown"),
        ("[environments.staging.app]\nname = 'other'\n", "[environments.staging] app: unknown key"),
        ("[environments.Prod]\n", "'Prod' is not an environment name"),
        ("[environments.production]\nrequire = 'stage'\n", "'stage': no such environment"),
        ("[environments.staging]\nrequire = 'staging'\n", "staging.require names staging itself"),
        ("[environments.staging]\nenv = { PORT = '1' }\n", "PORT is set by kiln"),
    ],
)
def test_environment_mistakes_are_one_line_naming_the_environment(extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + extra)
    assert message in str(caught.value)
    assert "Traceback" not in str(caught.value)


def test_an_unknown_environment_is_refused_naming_the_known_ones(kiln: Kiln) -> None:
    (kiln.cwd / "kiln.toml").write_text(BASE + ENVIRONMENTS)
    result = kiln("config", "check", "--env", "prod", ok=False)
    assert result.exit_code != 0
    assert "no environment 'prod' in kiln.toml (environments: production, staging)" in (
        result.stderr
    )
    checked = kiln("config", "check", "--env", "staging", "--json")
    assert json.loads(checked.stdout)["fleet"]["size"] == 1
    assert "environments: production, staging" in kiln("config", "check").stdout


def _manifest(env: dict[str, str], content: str = "a" * 64) -> Manifest:
    return Manifest(
        app="shop",
        run="python3 app.py",
        env=env,
        python="python3",
        files=(FileEntry("app.py", 0o644, 10, content),),
    )


def test_the_code_digest_leaves_out_only_the_env_layer() -> None:
    staging, production = _manifest({"MODE": "staging"}), _manifest({"MODE": "production"})
    assert staging.digest != production.digest
    assert staging.code_digest == production.code_digest
    assert _manifest({"MODE": "staging"}, "b" * 64).code_digest != staging.code_digest
    assert staging.code_digest not in (staging.digest, production.digest)
    # image digests are what they were before code digests existed
    assert _manifest({}).digest == (
        "sha256:3c6c4c5cc9da75937c9ec6e8ea5cf4f2ec8e4bb6dad0570005762cb8db46c9b4"
    )


def _bake(kiln: Kiln, *args: str) -> dict[str, str]:
    data: dict[str, str] = json.loads(kiln("bake", "--json", *args).stdout)
    return data


def test_env_only_difference_is_a_new_image_with_the_same_code(kiln: Kiln) -> None:
    (kiln.cwd / "kiln.toml").write_text(BASE + ENVIRONMENTS)
    (kiln.cwd / "app.py").write_text("print('hi')\n")
    staging, production = _bake(kiln, "--env", "staging"), _bake(kiln, "--env", "production")
    assert staging["image"] != production["image"]
    assert staging["code"] == production["code"] and staging["code"].startswith("code-")
    listed = json.loads(kiln("images", "--json").stdout)
    codes = {i["image"]: i["code"] for i in listed}
    assert codes == {staging["image"]: staging["code"], production["image"]: staging["code"]}
    table = kiln("images").stdout
    assert "CODE" in table and table.count(staging["code"][:10]) == 2  # narrow: may be cut
    (kiln.cwd / "app.py").write_text("print('changed')\n")
    assert _bake(kiln, "--env", "staging")["code"] != staging["code"]


def test_a_reused_bake_reports_its_code(kiln: Kiln, tmp_path: Path) -> None:
    (kiln.cwd / "kiln.toml").write_text(BASE)
    (kiln.cwd / "app.py").write_text("print('hi')\n")
    first, again = _bake(kiln), _bake(kiln)
    assert again["reused"] and again["code"] == first["code"]


def test_amis_are_tagged_with_their_code_and_env_layer() -> None:
    from kiln.aws.ami import ami_tags, env_digest
    from kiln.image.store import ImageRecord

    staging, production = _manifest({"MODE": "staging"}), _manifest({"MODE": "production"})
    tags = [
        ami_tags(ImageRecord(digest=m.digest, manifest=m), "ami-base", "recipe")
        for m in (staging, production)
    ]
    assert tags[0]["kiln:code"] == tags[1]["kiln:code"] == staging.code_digest
    assert tags[0]["kiln:env"] == env_digest({"MODE": "staging"}) != tags[1]["kiln:env"]


def _instance(image: str, healthy: bool = True, in_service: bool = True) -> dict[str, object]:
    return {"image": image, "healthy": healthy, "in_service": in_service}


@pytest.mark.parametrize(
    ("status", "serving"),
    [
        ({"instances": [_instance("img-a"), _instance("img-a")]}, "img-a"),
        ({"instances": [_instance("img-a"), _instance("img-b", in_service=False)]}, "img-a"),
        ({"instances": [_instance("img-a"), _instance("img-b")]}, None),  # mid-rollout
        ({"instances": [_instance("img-a"), _instance("img-a", healthy=False)]}, None),
        ({"instances": [_instance("img-a", in_service=False)]}, None),  # nothing serves
        ({"instances": [_instance("img-a")], "lock": {"holder": "ci@runner"}}, None),
        ({"instances": [_instance("img-a")], "deployment_in_progress": {"id": "d"}}, None),
    ],
)
def test_only_one_image_served_healthily_and_at_rest_can_be_promoted(
    status: dict[str, object], serving: str | None
) -> None:
    from kiln.promotion import serving_image

    assert serving_image(status) == serving


class _Environment:
    """A platform as promotion sees it: what it serves, its history, its images' code."""

    def __init__(self, serves: str | None, history: list[dict[str, str]]) -> None:
        self.serves, self.entries = serves, history
        self.codes = {"img-a": "sha256:" + "a" * 64, "img-b": "sha256:" + "b" * 64}

    def status(self) -> dict[str, object]:
        return {
            "fleet": "shop-staging",
            "instances": [_instance(self.serves)] if self.serves else [],
        }

    def history(self, limit: int, *, all_fleets: bool) -> list[dict[str, str]]:
        return self.entries

    def code_of(self, image: str) -> str | None:
        return self.codes.get(image)


def test_require_accepts_code_that_succeeded_there_and_refuses_the_rest() -> None:
    from typing import cast

    from kiln.errors import PromotionRefused
    from kiln.platform import Platform
    from kiln.promotion import check_required

    staging = cast(Platform, _Environment(None, [{"to": "img-a", "outcome": "succeeded"}]))
    production = cast(Platform, _Environment(None, []))
    assert (
        check_required(production, "production", "img-a", staging, "staging", override=False)
        is None
    )
    failed = cast(Platform, _Environment(None, [{"to": "img-b", "outcome": "rolled back"}]))
    with pytest.raises(PromotionRefused, match="img-b \\(code-bbbbbbbbbbbb\\) was never healthy"):
        check_required(production, "production", "img-b", failed, "staging", override=False)
    note = check_required(production, "production", "img-b", failed, "staging", override=True)
    assert note == "override-require: img-b (code-bbbbbbbbbbbb) never healthy in staging"
    serving_now = cast(Platform, _Environment("img-b", []))  # healthy now, no history yet
    assert (
        check_required(production, "production", "img-b", serving_now, "staging", override=False)
        is None
    )
