from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from kiln.cli.docgen import generated
from kiln.home import Home
from kiln.image.store import Store
from kilntest import REPO, Kiln


def test_init_writes_a_valid_config(kiln: Kiln) -> None:
    (kiln.cwd / "app.py").write_text("print('hi')\n")
    (kiln.cwd / "requirements.txt").write_text("")
    kiln("init", "--name", "shop")
    text = (kiln.cwd / "kiln.toml").read_text()
    assert 'run = "python3 app.py"' in text and "requirements.txt" in text
    assert "ok (app shop)" in kiln("config", "check").stdout


def test_init_refuses_to_overwrite(kiln: Kiln) -> None:
    kiln("init")
    result = kiln("init", ok=False)
    assert result.exit_code == 2
    assert "already exists" in result.stderr and "--force" in result.stderr
    kiln("init", "--force")


def test_bad_config_is_one_line_not_a_traceback(kiln: Kiln) -> None:
    (kiln.cwd / "kiln.toml").write_text('[app]\nname = "a"\nrun = "x"\n[health]\npaht = "/"\n')
    result = kiln("config", "check", ok=False)
    assert result.exit_code == 2
    assert "[health] paht: unknown key (did you mean 'path'?)" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_config_schema_command(kiln: Kiln) -> None:
    schema = json.loads(kiln("config", "schema").stdout)
    assert schema["title"] == "kiln.toml"


def test_generated_docs_are_fresh() -> None:
    for name, text in generated().items():
        committed = (REPO / "docs" / name).read_text()
        assert committed == text, f"docs/{name} is stale: run 'make docs'"


def test_core_never_imports_the_cli_layer() -> None:
    """The library must stay usable without click/rich (STYLE.md rule 1)."""
    offenders = []
    for path in (REPO / "src" / "kiln").rglob("*.py"):
        if "cli" in path.relative_to(REPO / "src" / "kiln").parts:
            continue
        text = path.read_text()
        for banned in ("import click", "from click", "import rich", "from rich", "kiln.cli"):
            if banned in text:
                offenders.append(f"{path.name}: {banned}")
    assert offenders == []


def test_unwritable_home_is_a_clear_error(kiln: Kiln, tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    kiln("init")
    import pytest

    from kiln.errors import HomeError
    from kiln.home import Home

    with pytest.raises(HomeError) as info:
        Home.resolve(blocked / "home").ensure()
    assert "is not usable" in str(info.value)


def test_init_refuses_a_name_kiln_toml_would_reject(kiln: Kiln) -> None:
    result = kiln("init", "--name", "Bad Name", ok=False)
    assert result.exit_code == 2 and "cannot be an app name" in result.stderr
    assert not (kiln.cwd / "kiln.toml").exists()


def test_a_failure_with_json_is_still_one_json_document_on_stdout(kiln: Kiln) -> None:
    """Scripts parse stdout: a failed `--json` command left it empty (not JSON)."""
    for argv in (("status", "--json"), ("image", "show", "img-nope", "--json")):
        result = kiln(*argv, ok=False)
        doc = json.loads(result.stdout)
        assert doc["ok"] is False and doc["error"]["message"], doc
        assert doc["error"]["exit_code"] == result.exit_code != 0
        assert "error:" in result.stderr  # people still read the error line there
    plain = kiln("status", ok=False)
    assert plain.stdout == ""  # without --json, nothing on stdout
    # a usage error is one JSON document too
    usage = kiln("status", "--json", "--no-such-option", ok=False)
    assert usage.exit_code == 2 and json.loads(usage.stdout)["error"]["type"] == "UsageError"
    assert "No such option" in usage.stderr


def test_json_is_read_only_where_the_command_takes_it(kiln: Kiln) -> None:
    """`kiln run -- tool --json`: the --json is the tool's; kiln printed its own error
    as JSON on stdout, where the tool's output belongs."""
    result = kiln("run", "--", "python3", "tool.py", "--json", ok=False)
    assert result.stdout == "", result.stdout
    assert "error:" in result.stderr


def test_a_listen_address_another_program_holds_is_refused_before_the_bake(
    kiln: Kiln, home: Home
) -> None:
    """Found at the launch, it cost a whole bake and left an interrupted deployment."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        (kiln.cwd / "app.py").write_text("print('hi')\n")
        (kiln.cwd / "kiln.toml").write_text(
            '[app]\nname = "shop"\nrun = "python3 app.py"\n'
            f'[provider.local]\nlisten = "127.0.0.1:{taken}"\n'
        )
        result = kiln("deploy", ok=False)
    assert result.exit_code == 1
    assert f"127.0.0.1:{taken} is already in use" in result.stderr, result.stderr
    assert "set [provider.local] listen to a free address" in result.stderr
    assert Store(home).list_images() == []  # nothing baked
    assert not home.state_db.exists() or "dep-" not in kiln("history").stdout


def test_a_mistyped_command_names_the_nearest(kiln: Kiln) -> None:
    result = kiln("deplyo", ok=False)
    assert result.exit_code == 2 and "Did you mean deploy" in result.stderr


def test_a_command_refused_for_want_of_kiln_toml_leaves_no_home_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kiln deploy` outside an app directory said "no kiln.toml" and left an empty
    ~/.kiln (store/, tmp/) behind; a home that was there already stays."""
    fresh = tmp_path / "fresh-home"
    monkeypatch.setenv("KILN_HOME", str(fresh))
    empty = tmp_path / "empty"
    empty.mkdir()
    for command in ("deploy", "status", "rollback"):
        result = Kiln(empty)(command, ok=False)
        assert result.exit_code == 2 and "no kiln.toml" in result.stderr, result.stderr
        assert not fresh.exists(), command
    Home.resolve(fresh).ensure()
    assert Kiln(empty)("deploy", ok=False).exit_code == 2
    assert (fresh / "store").is_dir()  # not this command's to remove
