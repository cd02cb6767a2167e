"""The boot gate's log tail shows what went wrong, not only what came after it."""

from __future__ import annotations

from kiln.causes import condensed

NPM = """\
> mono@1.0.0 start
> npm start -w @mono/api
node:internal/modules/cjs/loader:1228
  throw err;
  ^

Error: Cannot find module 'express'
Require stack:
- /srv/app/packages/api/server.js
    at Module._resolveFilename (node:internal/modules/cjs/loader:1225:15)
    at Module._load (node:internal/modules/cjs/loader:1051:27)
    at Module.require (node:internal/modules/cjs/loader:1311:19)
    at require (node:internal/modules/helpers:179:18)
    at Object.<anonymous> (/srv/app/packages/api/server.js:1:17)
    at Module._compile (node:internal/modules/cjs/loader:1469:14)
    at Module._extensions..js (node:internal/modules/cjs/loader:1548:10)
    at Module.load (node:internal/modules/cjs/loader:1288:32)
    at Module._load (node:internal/modules/cjs/loader:1104:12)
    at Function.executeUserEntryPoint [as runMain] (node:internal/modules/run_main:174:12) {
  code: 'MODULE_NOT_FOUND',
  requireStack: [ '/srv/app/packages/api/server.js' ]
}

Node.js v20.19.2
npm error Lifecycle script `start` failed with error:
npm error code 1
npm error path /srv/app/packages/api
npm error workspace @mono/api@1.0.0
npm error location /srv/app/packages/api
npm error command failed
npm error command sh -c node server.js
"""


def test_the_cause_above_a_long_tail_is_shown_first() -> None:
    """Found behind `npm start` in a workspace: the 20-line tail held npm's lines and
    the stack, not the missing module."""
    shown = condensed(NPM, 20).splitlines()
    assert shown[0] == "Error: Cannot find module 'express'" and shown[1] == "…"
    assert shown[2:] == NPM.splitlines()[-20:]


def test_a_tail_that_holds_its_cause_is_left_as_it_is() -> None:
    text = "\n".join([f"line {n}" for n in range(30)] + ["ValueError: bad port"])
    assert condensed(text, 20).splitlines() == text.splitlines()[-20:]
    short = "only\nthree\nlines"
    assert condensed(short, 20) == short


GUNICORN = (
    ["[INFO] Starting gunicorn 23.0.0", "[INFO] Booting worker with pid: 12"]
    + ["Traceback (most recent call last):"]
    + [f'  File "/srv/deps/gunicorn/arbiter.py", line {n}, in spawn_worker' for n in range(9)]
    + ["ModuleNotFoundError: No module named 'nonexistent_module_xyz'"]
    + ["[INFO] Worker exiting (pid: 12)", "[ERROR] Worker (pid:12) exited with code 3"]
    + ["Traceback (most recent call last):"]
    + [f'  File "/srv/deps/gunicorn/app/base.py", line {n}, in run' for n in range(33)]
    + ["gunicorn.errors.HaltServer: <HaltServer 'Worker failed to boot.' 3>"]
)


def test_gunicorns_halt_does_not_hide_the_workers_error() -> None:
    """A worker's ModuleNotFoundError was line 16 of 50; the tail held only the
    arbiter's HaltServer traceback."""
    shown = condensed("\n".join(GUNICORN), 20).splitlines()
    assert shown[0] == "ModuleNotFoundError: No module named 'nonexistent_module_xyz'"
    assert shown[-1].startswith("gunicorn.errors.HaltServer")


# A boot test's console: the app's output, copied there by the boot-test drop-in,
# carries the kernel's clock and journald's "name[pid]: " before each line.
CONSOLE = "\n".join(
    [
        "[   38.201734] cloud-init[603]: Cloud-init v. 22.4.2 finished at Mon, 30 Nov 2026",
        "[   41.905112] run[731]: Traceback (most recent call last):",
        '[   41.905290] run[731]:   File "/opt/kiln/acme/app.py", line 1, in <module>',
        "[   41.905301] run[731]:     import flask",
        "[   41.905333] run[731]: ModuleNotFoundError: No module named 'flask'",
        *[
            f"[   {46 + n}.000000] systemd[1]: kiln-acme.service: Scheduled restart."
            for n in range(40)
        ],
    ]
)


def test_a_consoles_prefixed_lines_still_give_their_cause() -> None:
    """The AWS boot test's console tail was 40 lines of restarts: the cause is found
    behind the console's prefixes, as it is in a plain log."""
    shown = condensed(CONSOLE, 10).splitlines()
    assert shown[0] == "[   41.905333] run[731]: ModuleNotFoundError: No module named 'flask'"
    assert shown[1] == "…" and len(shown) == 12


# `npm ci` on a lockfile out of step with package.json (a React Router template)
NPM_CI = """\
npm error code EUSAGE
npm error
npm error `npm ci` can only install packages when your package.json and package-lock.json \
or npm-shrinkwrap.json are in sync. Please update your lock file with `npm install` before \
continuing.
npm error
npm error Missing: napi-windows-process-start-time@ from lock file
npm error
npm error Clean install a project
npm error
npm error Usage:
npm error npm ci
npm error
npm error Options:
"""


def test_npms_whole_error_leads_and_its_usage_is_left_out() -> None:
    """The line naming the package (Missing: …) was cut: only "npm error code EUSAGE"
    led the tail, which then held npm's usage text."""
    usage = "\n".join(f"npm error [--option-{n}]" for n in range(60))
    shown = condensed(NPM_CI + usage, 20).splitlines()
    assert shown[: shown.index("…")] == NPM_CI.splitlines()[:5]
    assert "Missing: napi-windows-process-start-time@ from lock file" in shown[4]
    assert "npm error Clean install a project" not in shown


def test_a_cause_that_is_not_npms_is_one_line() -> None:
    text = "\n".join(["Error: boom", "npm error code 1", *[f"l{n}" for n in range(30)]])
    assert condensed(text, 20).splitlines()[:2] == ["Error: boom", "…"]


class _NoLogs:
    def log_tail(self, instance: str, lines: int = 20) -> str:
        return ""


def _failed(reason: str | None) -> str:
    from kiln.deploy.gates import Gates
    from kiln.deploy.settings import Settings
    from kiln.providers.fake import FakeClock
    from kiln.providers.protocol import Instance, InstanceState

    clock = FakeClock()
    gates = Gates(_NoLogs(), clock, "web", Settings(), deadline=clock.now() + 60)  # type: ignore[arg-type]
    details = {"reason": reason} if reason else {}
    inst = Instance("i-1", "web", "img-1", InstanceState.FAILED, clock.now(), None, False, 0)
    return gates._trip_failed(Instance(**{**inst.__dict__, "details": details})).message


def test_the_run_line_returned_only_when_it_did() -> None:
    """A gunicorn stopped by the agent after its first GET / answered 500 exits 0 too:
    the gate blamed a run line that returns and named Panel."""
    assert "the run line returned" in _failed(None)
    assert "the run line returned" in _failed("exited with status 0")
    stopped = _failed("unhealthy: GET / answered 500 once its port accepted connections")
    assert "GET / answered 500" in stopped and "the run line returned" not in stopped


# Sails 1 failing to lift (a new user's app): it logs through captains-log, then exits 0
SAILS = """\
info: Starting app...
error: Failed to lift app: Error:
No sails.config.sockets.onlyAllowOrigins setting was detected, which is required
    at Hook.initialize (/srv/app/node_modules/sails-hook-sockets/lib/initialize.js:79:13)
""" + "".join(f"    at frame{n} (/srv/app/node_modules/sails/lib/x.js:{n}:1)\n" for n in range(30))


def test_a_loggers_error_line_leads_with_the_message_on_its_next_line() -> None:
    shown = condensed(SAILS, 20).splitlines()
    assert shown[:3] == [
        "error: Failed to lift app: Error:",
        "No sails.config.sockets.onlyAllowOrigins setting was detected, which is required",
        "…",
    ]


def test_a_minified_source_line_is_clipped() -> None:
    """A failed release's tail was one 20 KB line of node-sqlite3-wasm's bundle and a
    1,000-space caret line; the error under them was lost in the scroll."""
    bundle = "var a=" + "x" * 20_000
    text = "\n".join(
        [
            "/srv/app/node_modules/node-sqlite3-wasm/dist/node-sqlite3-wasm.js:1",
            bundle,
            " " * 1000 + "^",
            "",
            "SQLite3Error: table notes already exists",
            "Node.js v20.19.2",
        ]
    )
    shown = condensed(text, 20).splitlines()
    assert shown[1] == bundle[:300] + "… (19,706 more characters)"
    assert all(len(line) < 340 for line in shown)
    assert "SQLite3Error: table notes already exists" in shown


def test_npms_usage_is_left_out_of_the_tail_too() -> None:
    """The cause block already left it out; the tail under it still held 30 lines of
    `npm ci`'s options."""
    options = [f"npm error [--option-{n}]" for n in range(25)]
    tail = ["npm error Usage:", "npm error npm ci", "npm error", "npm error Options:", *options]
    end = ['npm error Run "npm help ci" for more info', "npm error A complete log of this run"]
    shown = condensed("\n".join(NPM_CI.splitlines()[:8] + tail + end), 40).splitlines()
    assert "npm error [--option-3]" not in shown and "npm error npm ci" not in shown
    assert "(npm's usage of the command, left out)" in shown
    assert shown[-2:] == end
    assert "npm error Missing: napi-windows-process-start-time@ from lock file" in shown


def test_an_exit_0_names_both_causes_without_assuming_a_language() -> None:
    said = _failed(None)
    assert "If the log below shows an error, the app stopped on it" in said
