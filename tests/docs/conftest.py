"""Fixtures: a moto server for the AWS commands the docs show."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from aws.awsservers import moto_server
from docs.awsdocs import aws_sandbox
from docs.sandbox import Sandbox
from kiln.home import Home


@pytest.fixture(scope="module")
def docs_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Its own server, stopped once this directory's tests are done."""
    with moto_server(tmp_path_factory.mktemp("moto-docs") / "moto.log") as url:
        yield url


@pytest.fixture
def aws_box(tmp_path: Path, docs_moto: str) -> Iterator[Sandbox]:
    home = Home.resolve(os.environ["KILN_HOME"]).ensure()
    with aws_sandbox(tmp_path, docs_moto, home) as box:
        yield box
