"""Which host files a process maps that were replaced since it started."""

from __future__ import annotations

from pathlib import Path

from kiln.local.stale import replaced_files

MAPS = """\
55d0c000-55d0d000 r--p 00000000 08:01 123 /usr/bin/python3.11 (deleted)
55d0d000-55d0e000 r-xp 00001000 08:01 123 /usr/bin/python3.11 (deleted)
7f00a000-7f00b000 r-xp 00000000 08:01 456 /usr/lib/x86_64-linux-gnu/libssl.so.3 (deleted)
7f00c000-7f00d000 r-xp 00000000 08:01 789 /usr/lib/x86_64-linux-gnu/libc.so.6
7f00e000-7f00f000 rw-s 00000000 00:05 111 /dev/zero (deleted)
7f010000-7f011000 rw-p 00000000 00:01 222 /memfd:cffi (deleted)
7f012000-7f013000 r--p 00000000 08:01 333 /home/app/instances/i-1/tmp/cache.db (deleted)
7ffd0000-7ffd1000 rw-p 00000000 00:00 0 [stack]
"""


def test_only_replaced_host_files_count(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "maps").write_text(MAPS)
    assert replaced_files(42, proc=tmp_path) == [
        "/usr/bin/python3.11",
        "/usr/lib/x86_64-linux-gnu/libssl.so.3",
    ]


def test_a_gone_process_has_none(tmp_path: Path) -> None:
    assert replaced_files(42, proc=tmp_path) == []
