"""D17 (issue 9): a write killed between its temporary file and the rename leaves an orphan ``.tmp``;
readers ignore it and the next write of the object (or a sweep) removes it, deterministically.

The crash is real: a child process writes through ``Lake.write_bytes`` and SIGKILLs itself at the
moment the temporary is complete (its ``fsync``), before the rename.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl

from risk_assets.lake import ORPHAN_TMP_AGE_S, Lake

ROOT = Path(__file__).resolve().parents[2]
REL = "raw_events/dt=2026-11-01/hour=07/part-00000.parquet"


def crash_mid_write(lake_dir: Path, rel: str, data: bytes) -> None:
    """Run a writer that is SIGKILLed after writing the temporary and before the rename."""
    code = textwrap.dedent(
        f"""
        import os, signal
        from risk_assets.lake import Lake
        os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
        Lake({str(lake_dir)!r}).write_bytes({rel!r}, {data!r})
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()


def test_crashed_write_leaves_an_orphan_readers_ignore_and_the_next_write_removes(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path))
    frame = pl.DataFrame({"event_id": ["a", "b"], "n": [1, 2]})
    lake.write_parquet(frame, REL)
    before = lake.versions("raw_events")

    crash_mid_write(tmp_path, REL, b"half of a new partition")
    orphans = lake.orphan_temps()
    assert len(orphans) == 1 and orphans[0].startswith(
        "raw_events/dt=2026-11-01/hour=07/.part-00000.parquet."
    )
    # Readers: the old object is intact and the orphan is invisible.
    assert list(lake.list("raw_events")) == [REL]
    assert list(lake.list("raw_events", suffix="")) == [REL]
    assert lake.versions("raw_events") == before
    assert lake.scan(list(lake.list("raw_events"))).collect().equals(frame)

    # The re-run writes the same object: the orphan of the dead writer goes, deterministically.
    lake.write_parquet(frame, REL)
    assert lake.orphan_temps() == []

    # A sweep does the same for a prefix; a live writer's temporary (this process) is kept until
    # it is older than the age bound.
    crash_mid_write(tmp_path, "models/registry/champion.json", b"{}")
    live = Path(lake.uri("raw_events/dt=2026-11-01/hour=08/.part-00000.parquet.x-1-y.tmp"))
    live.parent.mkdir(parents=True)
    live.write_bytes(b"in flight")
    from risk_assets import lake as lake_module

    mine = live.with_name(f".part-00000.parquet.{lake_module._host()}-{os.getpid()}-abc.tmp")
    mine.write_bytes(b"in flight, this process")
    assert len(lake.orphan_temps()) == 3
    assert lake.sweep_orphan_temps() == 1  # the crashed writer's; the other two may be alive
    assert sorted(Path(p).name for p in lake.orphan_temps()) == sorted([live.name, mine.name])
    old = os.stat(live).st_mtime - ORPHAN_TMP_AGE_S - 1
    os.utime(live, (old, old))
    assert lake.sweep_orphan_temps("raw_events") == 1
    assert [Path(p).name for p in lake.orphan_temps()] == [mine.name]
