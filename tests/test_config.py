from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.config import json_schema, load_config, parse_config
from kiln.durations import format_duration, parse_duration
from kiln.errors import ConfigError

MINIMAL = '[app]\nname = "shop"\nrun = "python3 app.py"\n'


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("2s", 2), ("5m", 300), ("7d", 604800), ("1m30s", 90), (3, 3), ("1.5", 1.5)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "5 parsecs", "-1", "s", "2x", True, [1]])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_format_duration_round_trips_common_values() -> None:
    for text in ("500ms", "2s", "5m", "1h", "7d"):
        assert parse_duration(format_duration(parse_duration(text))) == parse_duration(text)


def test_minimal_config_gets_sane_defaults() -> None:
    config = parse_config(MINIMAL)
    assert config.fleet.size == 2
    assert config.fleet.max_surge == 1 and config.fleet.max_unavailable == 0
    assert config.provider.local.listen == "127.0.0.1:8080"
    assert config.health.path is None


def test_full_config() -> None:
    config = parse_config(
        MINIMAL
        + '[env]\nLOG = "info"\n[secrets]\nDB = "env:DATABASE_URL"\n'
        + '[health]\npath = "/health"\ninterval = "500ms"\n'
        + '[fleet]\nsize = 3\nmax_age = "7d"\n[provider.local]\nlisten = "127.0.0.1:9000"\n'
    )
    assert config.env == {"LOG": "info"}
    assert config.health.interval == 0.5
    assert config.fleet.max_age == 604800
    assert config.provider.local.port == 9000


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="kiln.toml")
    return str(info.value)


def test_typo_suggests_the_key() -> None:
    message = _error(MINIMAL + "[health]\nintervall = 3\n")
    assert message == "kiln.toml: [health] intervall: unknown key (did you mean 'interval'?)"


def test_unknown_section_lists_valid_keys() -> None:
    message = _error(MINIMAL + "[zzz]\nx = 1\n")
    assert "zzz: unknown key" in message and "valid keys:" in message and "fleet" in message


def test_bad_duration_names_the_key() -> None:
    assert "[fleet] drain: '5 parsecs' is not a duration" in _error(
        MINIMAL + '[fleet]\ndrain = "5 parsecs"\n'
    )


def test_empty_run_command() -> None:
    assert "[app] run: the run command is empty" in _error('[app]\nname = "a"\nrun = "  "\n')


def test_missing_app_section() -> None:
    assert "app: required key is missing" in _error("[fleet]\nsize = 2\n")


def test_malformed_toml_shows_the_line() -> None:
    assert "line 2" in _error('[app]\nname = "a\n')


def test_reserved_and_duplicated_env() -> None:
    assert "PORT is set by kiln" in _error(MINIMAL + '[env]\nPORT = "1"\n')
    assert "set in both [env] and [secrets]" in _error(
        MINIMAL + '[env]\nDB = "x"\n[secrets]\nDB = "env:DB"\n'
    )


def test_secret_reference_syntax() -> None:
    assert "[secrets] DB" in _error(MINIMAL + '[secrets]\nDB = "plaintext"\n')


def test_rolling_must_be_able_to_progress() -> None:
    assert "cannot both be 0" in _error(MINIMAL + "[fleet]\nmax_surge = 0\n")


def test_sticky_sessions_by_cookie_with_an_optional_duration() -> None:
    assert parse_config(MINIMAL).fleet.sticky is None  # off locally, AWS's left as it is
    fleet = parse_config(MINIMAL + '[fleet]\nsticky = "cookie"\nsticky_duration = "2h"\n').fleet
    assert (fleet.sticky, fleet.sticky_duration) == ("cookie", 7200)
    assert "sticky_duration needs sticky = 'cookie'" in _error(
        MINIMAL + '[fleet]\nsticky_duration = "1h"\n'
    )
    assert "sticky" in _error(MINIMAL + '[fleet]\nsticky = "ip"\n')
    assert "at most 604800" in _error(
        MINIMAL + '[fleet]\nsticky = "cookie"\nsticky_duration = "8d"\n'
    )


def test_bad_listen_address() -> None:
    assert "is not HOST:PORT" in _error(MINIMAL + '[provider.local]\nlisten = "8080"\n')


def test_trusted_proxies_are_addresses_or_cidr_blocks() -> None:
    bad = MINIMAL + '[provider.local]\ntrusted_proxies = ["10.0.0.0/8", "proxy.local"]\n'
    assert "'proxy.local' is not an address or CIDR block" in _error(bad)
    good = MINIMAL + '[provider.local]\ntrusted_proxies = ["127.0.0.1", "10.0.0.0/8", "::1"]\n'
    assert parse_config(good).provider.local.trusted_proxies == ["127.0.0.1", "10.0.0.0/8", "::1"]


def test_ui_listen_is_a_loopback_address_or_nothing() -> None:
    assert parse_config(MINIMAL).provider.local.ui_listen is None  # off by default
    for good in ("127.0.0.1:8700", "127.0.0.2:8700", "[::1]:8700", "localhost:8700"):
        local = parse_config(MINIMAL + f'[provider.local]\nui_listen = "{good}"\n').provider.local
        assert local.ui_listen == good
    for bad in ("0.0.0.0:8700", "10.1.2.3:8700", "[::]:8700", "example.com:8700"):
        error = _error(MINIMAL + f'[provider.local]\nui_listen = "{bad}"\n')
        assert f"ui_listen: '{bad}' is not a loopback address" in error, error
        assert "SSH tunnel" in error
    assert "is not HOST:PORT" in _error(MINIMAL + '[provider.local]\nui_listen = "8700"\n')


def test_hosts_are_host_names() -> None:
    local = '[provider.local]\nhosts = ["Shop.Example.com.", "*.shop.example.com"]\n'
    hosts = parse_config(MINIMAL + local).provider.local.hosts
    assert hosts == ["shop.example.com", "*.shop.example.com"]
    for bad in ("http://shop.example.com", "shop.example.com:443", "a..b", "*"):
        error = _error(MINIMAL + f'[provider.local]\nhosts = ["{bad}"]\n')
        assert "is not a host name" in error, error
    assert "listed twice" in _error(MINIMAL + '[provider.local]\nhosts = ["a.io", "A.io"]\n')


def test_missing_config_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(cwd=tmp_path)
    assert "kiln init" in (info.value.hint or "")


def test_schema_is_valid_json_schema() -> None:
    import jsonschema

    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert "app" in schema["required"]
    json.dumps(schema)


def test_engine_defaults_are_the_config_defaults() -> None:
    """Declared once: an empty [fleet]/[health]/[canary] and Settings() agree."""
    from kiln.config import Config
    from kiln.deploy.settings import Settings

    config = Config.model_validate({"app": {"name": "a", "run": "python3 app.py"}})
    assert Settings.from_config(config) == Settings()


BASE = '[app]\nname = "x"\nrun = "y"\n'


@pytest.mark.parametrize(
    ("table", "line", "expected"),
    [
        ("fleet", "size = true", "[fleet] size: must be an integer, not true"),
        ("fleet", 'size = "3"', "[fleet] size: must be an integer, not '3'"),
        ("fleet", "max_surge = 1.5", "[fleet] max_surge: must be an integer, not 1.5"),
        ("provider.local", "isolate = 1", "[provider.local] isolate: must be true or false"),
        ("provider.local", 'isolate = "yes"', "isolate: must be true or false, not 'yes'"),
        ("fleet", "strategy = 1", "[fleet] strategy: "),
    ],
)
def test_strict_types_never_coerce(table: str, line: str, expected: str) -> None:
    """``size = true`` used to scale a fleet to 1 with exit 0."""
    with pytest.raises(ConfigError) as caught:
        parse_config(f"{BASE}[{table}]\n{line}\n")
    assert expected in caught.value.message


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('grace = "99999999999d"', "[health] grace: '99999999999d' is longer than 366d"),
        ("grace = 1e300", "[health] grace: 1e+300 is longer than 366d"),
        ('interval = "inf"', "[health] interval: 'inf' is not a duration"),
        ("healthy_threshold = 9223372036854775807", "must be at most 100"),
    ],
)
def test_durations_and_counts_are_bounded(line: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"{BASE}[health]\n{line}\n")
    assert expected in caught.value.message


def test_the_largest_accepted_values_still_load() -> None:
    config = parse_config(
        f'{BASE}[fleet]\nsize = 1000\nmax_age = "366d"\n[provider.local]\n'
        f"log_max_bytes = {1 << 40}\n"
    )
    assert config.fleet.size == 1000 and config.fleet.max_age == 366 * 86400


ACME = 'acme = { directory = "https://ca.example/dir", email = "ops@example.com" }\n'


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        ("", "acme needs hosts: the names to get a certificate for"),
        ('hosts = ["*.example.com"]\n', "acme cannot get a wildcard certificate"),
        ('hosts = ["a.example.com"]\ntls_cert = "c.pem"\ntls_key = "k.pem"\n',
         "acme gets the certificate itself: drop tls_cert and tls_key"),
        ('hosts = ["a.example.com"]\nlisten = "0.0.0.0:80"\n',
         "acme.http must differ from listen, which speaks TLS"),
    ],
)  # fmt: skip
def test_acme_needs_names_and_no_certificate_files(local: str, expected: str) -> None:
    assert expected in _error(MINIMAL + "[provider.local]\n" + local + ACME)


@pytest.mark.parametrize(
    ("acme", "expected"),
    [
        ('{ directory = "http://ca.example/dir" }', "is not an https:// URL of an ACME directory"),
        ('{ directory = "https://ca.example/d", email = "ops" }', "'ops' is not an email address"),
        ('{ directory = "https://ca.example/d", http = "80" }', "'80' is not HOST:PORT"),
        ('{ directory = "https://ca.example/d", agree = true }', "agree: unknown key"),
    ],
)
def test_acme_settings_are_checked(acme: str, expected: str) -> None:
    text = MINIMAL + f'[provider.local]\nhosts = ["a.example.com"]\nacme = {acme}\n'
    assert expected in _error(text)


def test_acme_settings() -> None:
    local = parse_config(MINIMAL + '[provider.local]\nhosts = ["a.example.com"]\n' + ACME)
    local = local.provider.local
    assert local.acme is not None and local.acme.http_address == ("0.0.0.0", 80)


def test_a_run_line_the_shell_cannot_parse_is_a_config_error(tmp_path: Path) -> None:
    """`kiln config check` said ok, and only the boot gate found the syntax error,
    after a whole bake."""
    text = '[app]\nname = "web"\nrun = "python3 -m gunicorn --bind $HOST:$PORT (app:app"\n'
    with pytest.raises(ConfigError, match=r"\[app\] run: /bin/sh cannot parse it: .*\("):
        parse_config(text)
    bad_release = '[app]\nname = "web"\nrun = "python3 app.py"\nrelease = "migrate &&"\n'
    with pytest.raises(ConfigError, match=r"\[app\] release: /bin/sh cannot parse it"):
        parse_config(bad_release)
    assert parse_config('[app]\nname = "web"\nrun = "a && exec b \'c d\'"\n').app.run
