"""The data lake: a local directory or an S3 prefix, holding Hive-style Parquet partitions.

Paths inside the lake are relative (``raw_events/dt=2026-11-01/hour=07/part-00000.parquet``). Each
partition is one object written whole: on disk through a temporary file and an atomic rename, on S3
by a single PUT — so a reader never sees half a partition and a re-run replaces, never appends.

Orphan temporaries: a process killed between writing the temporary
``.{name}.{host}-{pid}-{uuid}.tmp`` and the rename leaves it behind (S3 has none: a PUT is all or
nothing). They are **ignored** by every reader (``list``/``versions``/``exists`` never return a
dot-file) and **cleaned** deterministically: each successful write of an object removes that
object's orphans — temporaries whose writer process (same host, pid in the name) no longer exists,
or older than ``ORPHAN_TMP_AGE_S`` whatever their origin — and :meth:`Lake.sweep_orphan_temps` does
the same for a whole prefix. A re-run of a crashed run rewrites the same objects, so it cleans up
after its predecessor; a concurrent writer's temporary (its process alive) is never touched.
"""

from __future__ import annotations

import io
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import polars as pl

PARQUET_COMPRESSION = "zstd"
ORPHAN_TMP_AGE_S = 3600.0  # a temporary this old belongs to no live writer


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _host() -> str:
    return "".join(c for c in socket.gethostname().split(".")[0] if c.isalnum() or c == "_") or "host"


def _writer_is_gone(name: str) -> bool:
    """The temporary's writer ran on this host and its process no longer exists."""
    owner = name[: -len(".tmp")].rsplit(".", 1)[-1].split("-")
    if len(owner) != 3 or owner[0] != _host() or not owner[1].isdigit():
        return False
    try:
        os.kill(int(owner[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def hive_hour_path(dataset: str, hour: datetime) -> str:
    """Relative directory of one hourly partition: ``dataset/dt=YYYY-MM-DD/hour=HH``."""
    return f"{dataset}/dt={hour:%Y-%m-%d}/hour={hour:%H}"


def hive_day_path(dataset: str, day: datetime) -> str:
    """Relative directory of one daily partition: ``dataset/dt=YYYY-MM-DD``."""
    return f"{dataset}/dt={day:%Y-%m-%d}"


@dataclass(frozen=True)
class Lake:
    """A lake rooted at ``url``: a filesystem path or ``s3://bucket/prefix``.

    ``storage_options`` go to Polars/object_store for S3 (e.g. ``aws_endpoint_url``,
    ``aws_allow_http``, ``aws_region``); boto3 gets the same endpoint for listing and deletes.
    """

    url: str
    storage_options: dict[str, str] = field(default_factory=dict)
    # A boto3 S3 client (e.g. from dagster-aws' S3Resource); built from storage_options if absent.
    s3_client: Any = field(default=None, compare=False, repr=False)

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3://")

    def uri(self, relpath: str) -> str:
        """Absolute URI of a relative lake path."""
        return f"{self.url.rstrip('/')}/{relpath.lstrip('/')}"

    # -- writing -----------------------------------------------------------------------------
    def write_parquet(self, frame: pl.DataFrame, relpath: str) -> int:
        """Write ``frame`` as one Parquet object at ``relpath``, atomically replacing it. Returns bytes."""
        buf = io.BytesIO()
        frame.write_parquet(buf, compression=PARQUET_COMPRESSION, statistics=True)
        data = buf.getvalue()
        self.write_bytes(relpath, data)
        return len(data)

    def write_bytes(self, relpath: str, data: bytes) -> None:
        """Write ``data`` at ``relpath`` atomically (rename on disk, single PUT on S3)."""
        if self.is_s3:
            bucket, key = self._bucket_key(relpath)
            self._s3().put_object(Bucket=bucket, Key=key, Body=data)
            return
        path = Path(self.uri(relpath))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{_host()}-{os.getpid()}-{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        self._remove_stale_temps(path.parent.glob(f".{path.name}.*.tmp"), ORPHAN_TMP_AGE_S)

    @staticmethod
    def _remove_stale_temps(candidates: Iterator[Path], older_than_s: float) -> int:
        cutoff = time.time() - older_than_s
        removed = 0
        for tmp in candidates:
            try:
                if _is_temp(tmp.name) and (_writer_is_gone(tmp.name) or tmp.stat().st_mtime <= cutoff):
                    tmp.unlink()
                    removed += 1
            except FileNotFoundError:  # removed by another writer meanwhile
                continue
        return removed

    def orphan_temps(self, relprefix: str = "") -> list[str]:
        """Relative paths of the temporaries under ``relprefix`` (crashed or in-flight writes; S3: none)."""
        if self.is_s3:
            return []
        root = Path(self.uri(relprefix))
        if not root.exists():
            return []
        base = Path(self.url)
        return sorted(str(p.relative_to(base)) for p in root.rglob(".*.tmp") if p.is_file())

    def sweep_orphan_temps(self, relprefix: str = "", older_than_s: float = ORPHAN_TMP_AGE_S) -> int:
        """Delete the orphan temporaries under ``relprefix`` (writer gone, or older than
        ``older_than_s``); returns how many."""
        if self.is_s3:
            return 0
        root = Path(self.uri(relprefix))
        if not root.exists():
            return 0
        return self._remove_stale_temps(root.rglob(".*.tmp"), older_than_s)

    def read_bytes(self, relpath: str) -> bytes:
        if self.is_s3:
            bucket, key = self._bucket_key(relpath)
            return self._s3().get_object(Bucket=bucket, Key=key)["Body"].read()
        return Path(self.uri(relpath)).read_bytes()

    def delete(self, relpath: str) -> None:
        """Delete one object (no error when it does not exist)."""
        if self.is_s3:
            bucket, key = self._bucket_key(relpath)
            self._s3().delete_object(Bucket=bucket, Key=key)
            return
        Path(self.uri(relpath)).unlink(missing_ok=True)

    def delete_prefix(self, relprefix: str) -> int:
        """Delete every object under ``relprefix``; returns how many were deleted."""
        if self.is_s3:
            bucket, prefix = self._bucket_key(relprefix.rstrip("/") + "/")
            s3 = self._s3()
            n = 0
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})
                    n += len(keys)
            return n
        root = Path(self.uri(relprefix))
        if not root.exists():
            return 0
        files = [p for p in root.rglob("*") if p.is_file()]
        for p in files:
            p.unlink()
        return len(files)

    # -- reading -----------------------------------------------------------------------------
    def list(self, relprefix: str, suffix: str = ".parquet") -> Iterator[str]:
        """Relative paths of the objects under ``relprefix`` whose name ends with ``suffix``
        (sorted; temporary files skipped)."""
        if self.is_s3:
            bucket, prefix = self._bucket_key(relprefix.rstrip("/") + "/")
            root_key = self._bucket_key("")[1]
            keys = []
            for page in self._s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                keys += [
                    o["Key"][len(root_key) :] for o in page.get("Contents", []) if o["Key"].endswith(suffix)
                ]
            yield from sorted(keys)
            return
        root = Path(self.uri(relprefix))
        if not root.exists():
            return
        base = Path(self.url)
        yield from sorted(  # dot-files (temporaries of writes in flight or crashed) are never listed
            str(p.relative_to(base))
            for p in root.rglob(f"*{suffix}")
            if not p.name.startswith(".") and p.is_file()
        )

    def versions(self, relprefix: str) -> dict[str, str]:
        """``{relative path: version token}`` of the Parquet objects under ``relprefix``.

        The token changes whenever an object is rewritten (S3 ETag; on disk, modification time in
        nanoseconds and size), so a reader can tell which objects changed since it last looked.
        """
        if self.is_s3:
            return {
                rel: o["ETag"].strip('"')
                for rel, o in self._s3_objects(relprefix)
                if rel.endswith(".parquet")
            }
        out = {}
        for rel in self.list(relprefix):
            st = Path(self.uri(rel)).stat()
            out[rel] = f"{st.st_mtime_ns}:{st.st_size}"
        return out

    def exists(self, relpath: str) -> bool:
        if self.is_s3:
            bucket, key = self._bucket_key(relpath)
            resp = self._s3().list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
            return any(o["Key"] == key for o in resp.get("Contents", []))
        return Path(self.uri(relpath)).exists()

    def scan(self, relpaths: list[str], schema: dict[str, pl.DataType] | None = None) -> pl.LazyFrame:
        """Lazily scan the given Parquet objects as one frame (empty frame of ``schema`` if none)."""
        if not relpaths:
            return pl.LazyFrame(schema=schema or {})
        uris = [self.uri(p) for p in relpaths]
        opts = self.storage_options if self.is_s3 else None
        return pl.scan_parquet(uris, storage_options=opts, hive_partitioning=False)

    # -- S3 plumbing -------------------------------------------------------------------------
    def _s3_objects(self, relprefix: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(relative path, listing entry)`` of every object under ``relprefix`` (paginated)."""
        bucket, prefix = self._bucket_key(relprefix.rstrip("/") + "/")
        root_key = self._bucket_key("")[1]
        for page in self._s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                yield o["Key"][len(root_key) :], o

    def _bucket_key(self, relpath: str) -> tuple[str, str]:
        parsed = urlparse(self.uri(relpath))
        return parsed.netloc, parsed.path.lstrip("/")

    def _s3(self) -> Any:
        if self.s3_client is not None:
            return self.s3_client
        import boto3

        opts = self.storage_options
        return boto3.client(
            "s3",
            endpoint_url=opts.get("aws_endpoint_url"),
            region_name=opts.get("aws_region", "us-east-1"),
            aws_access_key_id=opts.get("aws_access_key_id"),
            aws_secret_access_key=opts.get("aws_secret_access_key"),
        )
