"""Build steps reused by their inputs: a code-only change does not run them again."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bake.apps import write_app
from kiln.config import load_config, parse_config
from kiln.errors import BuildError, ConfigError
from kiln.home import Home
from kiln.image.bake import bake
from kiln.image.result import BakeProgress
from kiln.image.store import Store


def _config(app: Path, counter: Path, outputs: str = '["deps"]') -> None:
    (app / "kiln.toml").write_text(
        '[app]\nname = "shop"\nrun = "python3 app.py"\n'
        "[[app.build]]\n"
        f'run = "echo ran >> {counter} && mkdir -p deps/pkg && cp reqs.txt deps/pkg/reqs.txt '
        '&& ln -sf pkg/reqs.txt deps/link && chmod +x deps/pkg/reqs.txt"\n'
        'inputs = ["reqs.txt"]\n'
        f"outputs = {outputs}\n"
        "[[app.build]]\n"
        'run = "cat deps/pkg/reqs.txt > seen.txt"\n'
    )


class Steps(BakeProgress):
    def __init__(self) -> None:
        self.ran: list[int] = []
        self.reused: list[int] = []

    def step(self, index: int, total: int, command: str) -> None:
        self.ran.append(index)

    def cached(self, index: int, total: int, command: str) -> None:
        self.reused.append(index)


def _bake(app: Path, home: Home) -> tuple[dict[str, tuple[int, str]], Steps]:
    steps = Steps()
    result = bake(load_config(app / "kiln.toml"), home, steps)
    manifest = Store(home).get(result.image).manifest
    files = {f.path: (f.mode, f.sha256) for f in manifest.files}
    files |= {link.path: (0, link.target) for link in manifest.links}
    return files, steps


def test_a_code_change_reuses_the_step_and_an_input_change_reruns_it(
    tmp_path: Path, home: Home
) -> None:
    app, counter = write_app(tmp_path / "app"), tmp_path / "ran"
    (app / "reqs.txt").write_text("django==5\n")
    _config(app, counter)
    first, steps = _bake(app, home)
    assert steps.ran == [1, 2] and counter.read_text() == "ran\n"
    (app / "app.py").write_text("print('v2')\n")
    second, steps = _bake(app, home)
    assert steps.reused == [1] and steps.ran == [2] and counter.read_text() == "ran\n"
    for path in ("deps/pkg/reqs.txt", "deps/link", "seen.txt"):
        assert second[path] == first[path], path  # the same bytes, mode and link
    assert second["deps/pkg/reqs.txt"][0] == 0o755
    assert second["app.py"] != first["app.py"]
    kept = list((home.root / "cache" / "steps").glob("*.tree"))
    assert len(kept) == 1  # the output tree itself, moved back after the bake
    shutil.rmtree(kept[0])  # without it, the outputs are written from the object store
    (app / "app.py").write_text("print('v3')\n")
    third, steps = _bake(app, home)
    assert steps.reused == [1] and counter.read_text() == "ran\n"
    assert {p: third[p] for p in first if p != "app.py"} == {
        p: first[p] for p in first if p != "app.py"
    }
    (app / "reqs.txt").write_text("django==5.1\n")
    _, steps = _bake(app, home)
    assert steps.ran == [1, 2] and counter.read_text() == "ran\nran\n"


def test_pruned_objects_make_a_miss_not_a_broken_image(
    tmp_path: Path, home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, counter = write_app(tmp_path / "app"), tmp_path / "ran"
    (app / "reqs.txt").write_text("x\n")
    _config(app, counter)
    first, _ = _bake(app, home)
    gone = first["deps/pkg/reqs.txt"][1]
    has_object, asked = Store.has_object, []

    def pruned_once(self: Store, sha: str) -> bool:  # gone until the step stores it again
        if sha == gone and not asked:
            asked.append(sha)
            return False
        return has_object(self, sha)

    monkeypatch.setattr(Store, "has_object", pruned_once)
    (app / "app.py").write_text("print('v3')\n")
    steps = Steps()
    bake(load_config(app / "kiln.toml"), home, steps)
    assert steps.ran == [1, 2] and steps.reused == []


def test_a_declared_output_the_step_does_not_make_is_an_error(tmp_path: Path, home: Home) -> None:
    app, counter = write_app(tmp_path / "app"), tmp_path / "ran"
    (app / "reqs.txt").write_text("x\n")
    _config(app, counter, outputs='["deps", "node_modules"]')
    with pytest.raises(BuildError, match="did not make its output 'node_modules'"):
        _bake(app, home)


@pytest.mark.parametrize(
    ("step", "error"),
    [
        ('{ run = "x", inputs = ["a"] }', "needs both inputs and outputs"),
        ('{ run = "x", outputs = ["deps"] }', "needs both inputs and outputs"),
        ('{ run = "x", inputs = ["a"], outputs = ["../up"] }', "must be a path inside the app"),
    ],
)
def test_cached_steps_are_validated(step: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse_config(f'[app]\nname = "a"\nrun = "x"\nbuild = [{step}]\n')


def test_outputs_a_later_step_changed_are_repaired_before_reuse(tmp_path: Path, home: Home) -> None:
    app, counter = write_app(tmp_path / "app"), tmp_path / "ran"
    (app / "reqs.txt").write_text("x\n")
    _config(app, counter)
    text = (app / "kiln.toml").read_text()
    text = text.replace(
        'run = "cat deps/pkg/reqs.txt > seen.txt"',
        'run = "echo changed >> deps/pkg/reqs.txt && touch deps/extra && rm deps/link"',
    )
    (app / "kiln.toml").write_text(text)
    store = Store(home)
    for version in ("v2", "v3"):
        files, steps = _bake(app, home)
        content = b"".join(store.objects.read(files["deps/pkg/reqs.txt"][1]))
        assert content == b"x\nchanged\n", version  # the step's output, changed once
        assert "deps/extra" in files and "deps/link" not in files
        (app / "app.py").write_text(f"print('{version}')\n")
    assert steps.reused == [1] and counter.read_text() == "ran\n"


def test_only_the_most_recently_used_output_trees_are_kept(
    tmp_path: Path, home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kiln.image import stepcache

    monkeypatch.setattr(stepcache, "KEEP_TREES", 2)
    app, counter = write_app(tmp_path / "app"), tmp_path / "ran"
    _config(app, counter)
    for n in range(4):
        (app / "reqs.txt").write_text(f"version {n}\n")
        _bake(app, home)
    steps = home.root / "cache" / "steps"
    assert len(list(steps.glob("*.tree"))) == 2 and len(list(steps.glob("*.json"))) == 4
    (app / "reqs.txt").write_text("version 0\n")  # its tree is gone: written from the store
    (app / "app.py").write_text("print('again')\n")
    files, steps_seen = _bake(app, home)
    assert steps_seen.reused == [1] and counter.read_text().count("ran") == 4
    assert b"".join(Store(home).objects.read(files["deps/pkg/reqs.txt"][1])) == b"version 0\n"
