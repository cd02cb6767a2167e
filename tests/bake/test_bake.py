from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from bake.apps import corrupt, write_app
from kiln.config import load_config
from kiln.errors import BuildError, CorruptObject, ImageNotFound
from kiln.home import Home
from kiln.image.bake import bake
from kiln.image.result import BakeProgress
from kiln.image.store import Store
from kiln.runenv import SYSTEM_PATH, python_on
from kilntest import Kiln


def _bake(app: Path, home: Home, progress: BakeProgress | None = None):  # type: ignore[no-untyped-def]
    return bake(load_config(app), home, progress)


def test_bake_records_every_file_and_reuses_unchanged(app_dir: Path, home: Home) -> None:
    first = _bake(app_dir, home)
    assert first.image.startswith("img-") and len(first.image) == 16
    assert first.digest == "sha256:" + first.image[4:] + first.digest[19:]
    assert not first.reused and first.files == 4
    record = Store(home).get(first.image)
    paths = [f.path for f in record.manifest.files]
    assert paths == sorted(paths) and "kiln.toml" not in paths
    again = _bake(app_dir, home)
    assert again.reused and again.digest == first.digest


def test_same_content_same_digest_across_dirs_homes_and_commits(tmp_path: Path) -> None:
    a = write_app(tmp_path / "a")
    b = write_app(tmp_path / "elsewhere" / "b")
    (b / "app.py").chmod(0o664)  # umask differences do not matter
    subprocess.run(["git", "init", "-q", str(b)], check=True)
    ha, hb = Home(tmp_path / "h1").ensure(), Home(tmp_path / "h2").ensure()
    assert _bake(a, ha).digest == _bake(b, hb).digest


def test_executable_bit_and_env_are_identity(app_dir: Path, home: Home) -> None:
    base = _bake(app_dir, home).digest
    (app_dir / "app.py").chmod(0o755)
    with_x = _bake(app_dir, home).digest
    assert with_x != base
    toml = app_dir / "kiln.toml"
    toml.write_text(toml.read_text() + '[env]\nAPP_VERSION = "v2"\n')
    assert _bake(app_dir, home).digest != with_x


def test_fleet_settings_do_not_change_the_image(app_dir: Path, home: Home) -> None:
    base = _bake(app_dir, home)
    toml = app_dir / "kiln.toml"
    toml.write_text(toml.read_text() + "[fleet]\nsize = 7\n")
    again = _bake(app_dir, home)
    assert again.digest == base.digest


def test_one_file_change_stores_one_new_object(app_dir: Path, home: Home) -> None:
    store = Store(home)
    _bake(app_dir, home)
    before = store.objects.all()
    (app_dir / "static" / "f1.txt").write_text("changed\n")
    changed = _bake(app_dir, home)
    assert len(Store(home).objects.all() - before) == 1 and not changed.reused


def test_excludes_kilnignore_and_vcs(app_dir: Path, home: Home) -> None:
    (app_dir / ".git").mkdir()
    (app_dir / ".git" / "HEAD").write_text("ref")
    (app_dir / ".kilnignore").write_text("secret.txt\n")
    (app_dir / "secret.txt").write_text("x")
    (app_dir / "node_modules" / "pkg").mkdir(parents=True)
    (app_dir / "node_modules" / "pkg" / "i.js").write_text("x")
    (app_dir / "kiln.toml").write_text(
        (app_dir / "kiln.toml")
        .read_text()
        .replace('run = "python3 app.py"', 'run = "python3 app.py"\nexclude = ["node_modules/"]')
    )
    (app_dir / "data").mkdir()
    result = _bake(app_dir, home)
    record = Store(home).get(result.image)
    paths = {f.path for f in record.manifest.files}
    assert paths == {"app.py", "static/f0.txt", "static/f1.txt", "static/f2.txt"}
    assert record.manifest.dirs == ("data",)


def test_build_steps_run_once_and_are_cached(app_dir: Path, home: Home, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    (app_dir / "kiln.toml").write_text(
        '[app]\nname = "shop"\nrun = "python3 app.py"\n'
        f'build = ["echo run >> {counter}", "mkdir -p out && echo built > out/asset.txt"]\n'
    )
    lines: list[str] = []

    class Capture(BakeProgress):
        def step(self, index: int, total: int, command: str) -> None:
            lines.append(f"{index}/{total} {command}")

    first = _bake(app_dir, home, Capture())
    assert lines[0].startswith("1/2 echo run") and len(lines) == 2
    assert "out/asset.txt" in {f.path for f in Store(home).get(first.image).manifest.files}
    assert not (app_dir / "out").exists(), "build steps must run in a scratch copy"
    second = _bake(app_dir, home)
    assert second.reused and counter.read_text().count("run") == 1


def test_failing_build_step_names_step_code_and_tail(app_dir: Path, home: Home) -> None:
    (app_dir / "kiln.toml").write_text(
        '[app]\nname = "shop"\nrun = "python3 app.py"\n'
        'build = ["true", "echo compiling; echo boom >&2; exit 7"]\n'
    )
    with pytest.raises(BuildError) as info:
        _bake(app_dir, home)
    message = str(info.value)
    assert "build step 2/2 failed with exit code 7" in message
    assert "compiling" in message and "boom" in message
    assert Store(home).list_images() == []
    assert not any(home.tmp.iterdir()), "scratch must be removed"


def test_a_failing_steps_cause_leads_its_tail(app_dir: Path, home: Home) -> None:
    """`npm ci` says why it refuses the lockfile, then prints 60 lines of usage: the
    30-line tail held only the usage."""
    script = "echo npm error npm ci can only install in sync; seq 60; exit 1"
    (app_dir / "kiln.toml").write_text(
        f'[app]\nname = "shop"\nrun = "python3 app.py"\nbuild = ["{script}"]\n'
    )
    with pytest.raises(BuildError) as info:
        _bake(app_dir, home)
    lines = str(info.value).splitlines()
    assert lines[1:3] == ["  | npm error npm ci can only install in sync", "  | …"], lines
    assert lines[-1] == "  | 60"


def test_a_failing_npm_steps_whole_error_leads_its_tail(app_dir: Path, home: Home) -> None:
    """npm's "code EUSAGE" led the tail, but the line naming the package that is
    missing from the lock file, three lines down, was cut out with the usage."""
    said = ["code EUSAGE", "", "npm ci can only install in sync", "", "Missing: ms@ from lock file"]
    said += ["", "Clean install a project", "", "Usage:", "npm ci"]
    script = "; ".join(f"echo npm error {line}".rstrip() for line in said)
    (app_dir / "kiln.toml").write_text(
        f'[app]\nname = "shop"\nrun = "python3 app.py"\nbuild = ["{script}; seq 60; exit 1"]\n'
    )
    with pytest.raises(BuildError) as info:
        _bake(app_dir, home)
    lines = str(info.value).splitlines()
    assert lines[1:7] == [
        "  | npm error code EUSAGE",
        "  | npm error",
        "  | npm error npm ci can only install in sync",
        "  | npm error",
        "  | npm error Missing: ms@ from lock file",
        "  | …",
    ], lines


def test_a_failing_step_whose_output_was_shown_is_not_printed_twice(
    app_dir: Path, home: Home
) -> None:
    """`kiln bake` streams each step's output: the error then repeated its last 30
    lines right below them."""
    (app_dir / "kiln.toml").write_text(
        '[app]\nname = "shop"\nrun = "python3 app.py"\nbuild = ["echo $((6 * 7)); exit 7"]\n'
    )
    shown: list[str] = []

    class Console(BakeProgress):
        shows_output = True

        def output(self, line: str) -> None:
            shown.append(line)

    with pytest.raises(BuildError) as info:
        _bake(app_dir, home, Console())
    assert shown == ["42"]
    assert "42" not in str(info.value) and "its output is above" in str(info.value)


def test_empty_source_is_an_error(tmp_path: Path, home: Home) -> None:
    (tmp_path / "kiln.toml").write_text('[app]\nname = "e"\nrun = "x"\n')
    with pytest.raises(BuildError, match="no source files"):
        _bake(tmp_path, home)


def test_symlink_outside_app_is_refused(app_dir: Path, home: Home) -> None:
    (app_dir / "link").symlink_to("/etc/hostname")
    with pytest.raises(BuildError, match="points outside the app"):
        _bake(app_dir, home)


def test_relative_symlink_is_kept(app_dir: Path, home: Home, tmp_path: Path) -> None:
    (app_dir / "current").symlink_to("static/f0.txt")
    result = _bake(app_dir, home)
    dest = tmp_path / "inst"
    Store(home).materialize(result.image, dest)
    assert (dest / "current").read_text() == "file 0\n"


@pytest.mark.parametrize("victim", ["static/f2.txt", "big.bin"])
def test_corrupted_object_is_named_and_never_materialized(
    app_dir: Path, home: Home, tmp_path: Path, victim: str
) -> None:
    (app_dir / "big.bin").write_bytes(os.urandom(3 << 20))  # stored loose, not packed
    store = Store(home)
    result = _bake(app_dir, home)
    entry = next(f for f in store.get(result.image).manifest.files if f.path == victim)
    corrupt(store, entry.sha256)
    assert Store(home).verify(result.image) == [victim]
    with pytest.raises(CorruptObject, match=re.escape(victim)):
        Store(home).materialize(result.image, tmp_path / "inst")
    assert not (tmp_path / "inst").exists()


def test_materialized_copies_cannot_touch_the_store(
    app_dir: Path, home: Home, tmp_path: Path
) -> None:
    store = Store(home)
    result = _bake(app_dir, home)
    dest = tmp_path / "inst"
    store.materialize(result.image, dest)
    (dest / "app.py").write_text("changed by the instance")
    assert store.verify(result.image) == []
    stored = [p for p in store.root.rglob("*") if p.is_file() and p.parent.name != "images"]
    stored = [p for p in stored if "objects" in p.parts or "packs" in p.parts]
    assert stored and all(p.stat().st_mode & 0o777 == 0o444 for p in stored)


def test_lookup_by_prefix_and_unknown_ids(app_dir: Path, home: Home) -> None:
    store = Store(home)
    result = _bake(app_dir, home)
    assert store.get(result.digest).id == result.image
    assert store.get(result.image[4:10]).id == result.image
    with pytest.raises(ImageNotFound):
        store.get("img-000000000000")
    with pytest.raises(ImageNotFound, match="not an image id"):
        store.get("latest!")


def test_export_tar_is_deterministic(app_dir: Path, home: Home) -> None:
    store = Store(home)
    result = _bake(app_dir, home)
    one, two = io.BytesIO(), io.BytesIO()
    store.export_tar(result.image, one)
    store.export_tar(result.image, two)
    assert one.getvalue() == two.getvalue()
    with tarfile.open(fileobj=io.BytesIO(one.getvalue())) as tar:
        assert sorted(tar.getnames()) == [
            "app.py",
            "static/f0.txt",
            "static/f1.txt",
            "static/f2.txt",
        ]


@pytest.mark.slow
def test_relocatable_python_app_with_a_real_dependency(tmp_path: Path, home: Home) -> None:
    """pip --target deps at bake time; the image must run from another directory."""
    wheel_dir = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "-d",
            str(wheel_dir),
            "six==1.16.0",
        ],
        check=True,
    )
    app = tmp_path / "app"
    app.mkdir()
    (app / "requirements.txt").write_text("six==1.16.0\n")
    (app / "app.py").write_text(
        "import os, sys\n"
        "sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'deps'))\n"
        "import six\n"
        "print('six', six.__version__, six.__file__)\n"
    )
    (app / "kiln.toml").write_text(
        '[app]\nname = "reloc"\nrun = "python3 app.py"\n'
        f'build = ["{sys.executable} -m pip install -q --no-index --find-links {wheel_dir} '
        '-r requirements.txt --target deps"]\n'
        'exclude = ["__pycache__/", "*.pyc"]\n'
    )
    result = _bake(app, home)
    dest = tmp_path / "somewhere" / "else"
    Store(home).materialize(result.image, dest)
    out = subprocess.run(
        [sys.executable, "app.py"], cwd=dest, capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("six 1.16.0") and str(dest) in out


def _default_sigint() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _kill_bake_midway(app: Path, home: Path, sig: int) -> subprocess.CompletedProcess[str]:
    """Start a real `kiln bake` and signal it while it is storing objects."""
    env = {**os.environ, "KILN_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiln.cli", "bake"],
        cwd=app,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a suite started in the background (`make test &`) inherits SIGINT ignored, as
        # shells do for background jobs; Ctrl-C at a terminal is what is tested here
        preexec_fn=_default_sigint,
    )
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        packs = list((home / "tmp").glob("pack-*.tmp")) if (home / "tmp").exists() else []
        if any(p.stat().st_size > 20_000 for p in packs if p.exists()):
            break
        time.sleep(0.002)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGKILL", "SIGINT"])
def test_interrupted_bake_leaves_no_image(tmp_path: Path, signame: str) -> None:
    import signal

    app = write_app(tmp_path / "big", files=12000)
    for attempt in range(5):  # a starved poller may see the (1 s) bake finish first
        home = tmp_path / f"h{attempt}"
        result = _kill_bake_midway(app, home, getattr(signal, signame))
        if result.returncode != 0:
            break
    assert result.returncode != 0, "the bake finished before it could be interrupted, 5 times"
    if signame == "SIGINT":
        assert result.returncode == 130 and "Traceback" not in result.stderr
    images = home / "store" / "images"
    assert not images.exists() or not list(images.iterdir())
    h = Home(home).ensure()
    done = _bake(app, h)
    assert not done.reused and Store(h).verify(done.image) == []
    assert [p.name for p in h.tmp.iterdir()] == []


def test_bake_json_cli(kiln, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_app(kiln.cwd)
    first = json.loads(kiln("bake", "--json").stdout)
    assert {"image", "digest", "files", "bytes", "reused", "seconds"} <= set(first)
    assert first["reused"] is False
    assert json.loads(kiln("bake", "--json").stdout)["reused"] is True
    listed = json.loads(kiln("images", "--json").stdout)
    assert [i["image"] for i in listed] == [first["image"]]
    assert 0 <= listed[0]["age"] < 600  # seconds since it was baked
    assert "AGE" in kiln("images").stdout
    shown = json.loads(kiln("image", "show", first["image"], "--json").stdout)
    assert shown["run"] == "python3 app.py" and len(shown["manifest"]) == first["files"]
    assert "ok, 4 files verified" in kiln("image", "verify", first["image"]).stdout


def test_cli_errors_are_one_line(kiln) -> None:  # type: ignore[no-untyped-def]
    result = kiln("bake", ok=False)
    assert result.exit_code == 2 and "no kiln.toml" in result.stderr
    write_app(kiln.cwd)
    missing = kiln("image", "show", "img-123456789abc", ok=False)
    assert missing.exit_code == 1 and "no image img-123456789abc" in missing.stderr


def test_commit_and_dirty_flag_are_recorded_beside_the_image(app_dir: Path, home: Home) -> None:
    git = ["git", "-C", str(app_dir), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    result = _bake(app_dir, home)
    assert (result.commit, result.dirty) == (head.strip(), False)
    (app_dir / "new.txt").write_text("x")
    dirty = _bake(app_dir, home)
    assert dirty.dirty is True and dirty.commit == head.strip()


def test_build_steps_use_the_systems_python_and_the_image_records_it(
    app_dir: Path, home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv = Path(sys.prefix)
    monkeypatch.setenv("VIRTUAL_ENV", str(venv))
    monkeypatch.setenv("PATH", f"{venv / 'bin'}:{os.environ['PATH']}")
    (app_dir / "kiln.toml").write_text(
        '[app]\nname = "shop"\nrun = "python3 app.py"\n'
        "build = [\"python3 -c 'import os, sys; print(sys.executable, "
        'os.environ.get(\\"VIRTUAL_ENV\\"))\' > exe.txt"]\n'
    )
    record = Store(home).get(_bake(app_dir, home).image)
    (exe,) = [f for f in record.manifest.files if f.path == "exe.txt"]
    executable, virtual_env = b"".join(Store(home).objects.read(exe.sha256)).decode().split()
    assert not executable.startswith(str(venv)) and virtual_env == "None"
    assert record.manifest.python == python_on(SYSTEM_PATH)
    assert record.manifest.python.startswith("python3.")


def test_an_interpreter_the_host_lacks_is_refused_at_bake(app_dir: Path, home: Home) -> None:
    (app_dir / "kiln.toml").write_text(
        '[app]\nname = "shop"\nrun = "python3 app.py"\npython = "python3.99"\n'
    )
    with pytest.raises(BuildError, match=r"python3\.99"):
        _bake(app_dir, home)


def test_build_output_is_shown_as_written_without_markup(app_dir: Path, kiln: Kiln) -> None:
    (app_dir / "kiln.toml").write_text(
        '[app]\nname = "shop"\nrun = "python3 app.py"\n'
        "build = [\"echo 'Collecting [extra]'; echo done\"]\n"
    )
    kiln.cwd = app_dir
    result = kiln("bake")
    assert "  Collecting [extra]\n  done\n" in result.stderr
    assert "[dim]" not in result.stderr and "[/]" not in result.stderr


def test_excludes_choose_the_source_and_never_strip_build_outputs(
    app_dir: Path, home: Home
) -> None:
    (app_dir / "deps").mkdir()
    (app_dir / "deps" / "stale.py").write_text("a local install, not for the image\n")
    (app_dir / "kiln.toml").write_text(
        '[app]\nname = "shop"\nrun = "python3 app.py"\n'
        'exclude = ["deps/", "staticfiles/", "*.txt"]\n'
        'build = ["test ! -e deps/stale.py && mkdir -p deps/django/contrib/staticfiles '
        "&& echo css > deps/django/contrib/staticfiles/a.css && echo x > deps/new.py "
        '&& echo made > notes.txt"]\n'
    )
    paths = {f.path for f in Store(home).get(_bake(app_dir, home).image).manifest.files}
    assert {"deps/new.py", "deps/django/contrib/staticfiles/a.css", "notes.txt"} <= paths
    assert "deps/stale.py" not in paths and "static/f0.txt" not in paths
