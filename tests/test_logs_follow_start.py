"""`kiln logs -f` misses no line written between showing the last lines and following.

It took the log's size to follow from only after printing the first lines, so
a line written in between was never printed: on a busy machine the test that
sends a request as soon as the first lines appear lost the request's line
(tests/local/test_logs_follow.py). Here the in-between write is made certain
by appending while the first lines are being read; no agent runs, so the
follower prints what there is and ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kiln.cli import agent as agent_cli
from kiln.home import Home
from kiln.local.client import agent_status, stop_agent
from kilntest import Kiln

INSTANCE = "i-0123456789ab"


def _log(home: Home, text: str) -> Path:
    logs = home.agent_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"{INSTANCE}.log"
    path.write_text(text)
    return path


def _appending_after(real: Any, path: Path, line: str) -> Any:
    def read_then_append(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        with path.open("a") as f:
            f.write(line)
        return result

    return read_then_append


def test_a_line_written_while_the_tail_is_shown_is_followed(
    home: Home, kiln: Kiln, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _log(home, "listening on\n")
    monkeypatch.setattr(
        agent_cli, "log_tail", _appending_after(agent_cli.log_tail, path, "served /late\n")
    )
    out = kiln("logs", INSTANCE, "-f").stdout
    assert out.splitlines() == ["listening on", "served /late"]


def test_a_line_half_written_when_shown_is_followed_whole(
    home: Home, kiln: Kiln, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _log(home, "listening on\nserved /ha")
    monkeypatch.setattr(agent_cli, "log_tail", _appending_after(agent_cli.log_tail, path, "lf\n"))
    out = kiln("logs", INSTANCE, "-f").stdout
    assert out.splitlines() == ["listening on", "served /half"]


def test_fleet_follow_prints_a_line_written_while_the_first_lines_are_shown(
    home: Home, kiln: Kiln, monkeypatch: pytest.MonkeyPatch
) -> None:
    (kiln.cwd / "kiln.toml").write_text('[app]\nname = "web"\nrun = "python3 app.py"\n')
    path = _log(home, "listening on\n")
    monkeypatch.setattr(
        agent_cli, "_fleet_logs", lambda _home, _fleet, **_: {INSTANCE: (path, False)}
    )
    monkeypatch.setattr(
        agent_cli, "timed_lines", _appending_after(agent_cli.timed_lines, path, "served /late\n")
    )
    lines = [line.split("  ", 1)[1] for line in kiln("logs", "-f").stdout.splitlines()]
    assert lines == ["listening on", "served /late"]


def test_without_follow_a_half_written_last_line_is_shown(home: Home, kiln: Kiln) -> None:
    _log(home, "listening on\nEnter a number: ")
    assert kiln("logs", INSTANCE).stdout.splitlines() == ["listening on", "Enter a number: "]


def test_fleet_follow_ends_when_the_ended_instances_logs_expire_between_two_looks(
    home: Home, kiln: Kiln, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent lists an instance live, then (it ended and its log expired, as
    log_retention allows, between two of the follower's looks) no longer lists it.
    Before, the follower kept the instance live and followed for ever (a fresh-clone
    CI run at load 8 hit it in tests/local/test_fleet_logs.py)."""
    (kiln.cwd / "kiln.toml").write_text('[app]\nname = "web"\nrun = "python3 app.py"\n')
    path = _log(home, "listening on\n")
    answers = iter([{INSTANCE: (path, True)}, {INSTANCE: (path, True)}])
    looks: list[int] = []

    def fleet_logs(_home: Home, _fleet: str, **_: Any) -> dict[str, tuple[Path, bool]]:
        looks.append(1)
        assert len(looks) < 8, "still following a fleet with nothing left"
        found = next(answers, None)
        if found is None:
            path.unlink(missing_ok=True)  # expired
            return {}  # the agent answered: nothing of the fleet is left
        return found

    monkeypatch.setattr(agent_cli, "_fleet_logs", fleet_logs)
    result = kiln("logs", "-f")
    assert [line.split("  ", 1)[1] for line in result.stdout.splitlines()] == ["listening on"]


def test_fleet_follow_goes_on_while_the_agent_does_not_answer(
    home: Home, kiln: Kiln, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No answer is not an answer: the instance stays live until the agent says it ended."""
    (kiln.cwd / "kiln.toml").write_text('[app]\nname = "web"\nrun = "python3 app.py"\n')
    path = _log(home, "listening on\n")
    answers = iter([{INSTANCE: (path, True)}, {INSTANCE: (path, True)}, None, None])
    looks: list[int] = []

    def fleet_logs(_home: Home, _fleet: str, **_: Any) -> dict[str, tuple[Path, bool]] | None:
        looks.append(1)
        if len(looks) == 3:
            with path.open("a") as f:
                f.write("served /while-unreachable\n")
        return next(answers, {INSTANCE: (path, False)})

    monkeypatch.setattr(agent_cli, "_fleet_logs", fleet_logs)
    lines = [line.split("  ", 1)[1] for line in kiln("logs", "-f").stdout.splitlines()]
    assert lines == ["listening on", "served /while-unreachable"] and len(looks) >= 5


def test_fleet_lines_of_one_time_keep_their_order(
    home: Home, kiln: Kiln, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A traceback is written at once, so its lines share a time: they were sorted by
    their text, `File ...` lines first and `Traceback (most recent call last):` last
    (found on a NestJS and a Django app; `kiln logs INSTANCE` had them right)."""
    (kiln.cwd / "kiln.toml").write_text('[app]\nname = "web"\nrun = "python3 app.py"\n')
    written = [
        "Traceback (most recent call last):",
        '  File "app.py", line 3, in <module>',
        "ZeroDivisionError: division by zero",
        "Error: boom at startup",
        "    at Object.<anonymous> (/app/server.js:2:7)",
    ]
    path = _log(home, "\n".join(written) + "\n")
    other = path.with_name("i-00000000000b.log")
    other.write_text("a line of another instance\n")
    monkeypatch.setattr(
        agent_cli,
        "_fleet_logs",
        lambda _home, _fleet, **_: {INSTANCE: (path, False), "i-00000000000b": (other, False)},
    )
    shown = [line.split("  ", 1) for line in kiln("logs").stdout.splitlines()]
    assert [text for iid, text in shown if iid.endswith(INSTANCE)] == written


def test_fleet_logs_without_a_running_agent_start_it(home: Home, kiln: Kiln) -> None:
    """`kiln logs` printed nothing and exited 0 when the agent was stopped, though the
    instances ran and their logs were on disk; it now starts the agent, as `kiln status`
    does, and says when the fleet has no logs at all."""
    (kiln.cwd / "kiln.toml").write_text('[app]\nname = "web"\nrun = "python3 app.py"\n')
    try:
        result = kiln("logs")
        assert "fleet web has no instance with logs" in result.stderr
        assert agent_status(home) is not None, "the agent was started"
    finally:
        stop_agent(home)
