"""Run lines: exec goes before the last simple command only when that is safe."""

from __future__ import annotations

import subprocess

import pytest

from kiln.runline import exec_form


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("python3 app.py", "exec python3 app.py"),
        (
            "python3 manage.py migrate --noinput && gunicorn -b $HOST:$PORT site.wsgi",
            "python3 manage.py migrate --noinput && exec gunicorn -b $HOST:$PORT site.wsgi",
        ),
        ("a; b || c", "a; b || exec c"),
        ("FOO=1 BAR='x y' node server.js", "FOO=1 BAR='x y' exec node server.js"),
        (">>log.txt node s.js 2>&1", ">>log.txt exec node s.js 2>&1"),
        ("echo 'a && b'; sleep \"1;\" ", "echo 'a && b'; exec sleep \"1;\" "),
        ("x=$(date; true) && app", "x=$(date; true) && exec app"),
        ("cd web && exec node s.js", "cd web && exec node s.js"),
    ],
)
def test_exec_goes_before_the_last_simple_command(line: str, expected: str) -> None:
    assert exec_form(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "app | tee log",
        "worker & app",
        "(cd web && app)",
        "{ a; b; }",
        "if true; then app; fi",
        "while true; do app; done",
        "cat <<EOF\nx\nEOF",
        "app # comment",
        "app 'unterminated",
        "a &&",
        "X=1",
        "echo 'set [app] run' >&2; exit 64",  # `exec exit` is "exit: not found"
        "cd web",
    ],
)
def test_lines_kiln_cannot_rewrite_run_unchanged(line: str) -> None:
    assert exec_form(line) == line


def test_the_rewritten_line_means_what_the_user_wrote() -> None:
    line = 'A="x y" && test "$A" = "x y" && printf "%s|%s" "$A" \'$HOME\''
    out = subprocess.run(["/bin/sh", "-c", exec_form(line)], capture_output=True, text=True)
    assert (out.returncode, out.stdout) == (0, "x y|$HOME")
