"""Files under one root URI: paths, atomic writes, staged directories. The run directory (`rundir`) builds on it.

Any `pyarrow.fs` URI works (a local path, file://, s3://, gs://), with pyarrow's URI options
(for an S3-compatible server: s3://bucket/run?endpoint_override=host:9000&scheme=http). Every
output is written under a temporary name and moved (on object stores, copied) into
place when complete, so a failed stage leaves the previous outputs intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ray_recall import faults


class Storage:
    """A root directory on any filesystem pyarrow knows; every part path is relative to it."""

    def __init__(self, uri: str):
        if "://" not in uri:
            uri = os.path.abspath(os.path.expanduser(uri))
        self.fs, self.root = pafs.FileSystem.from_uri(uri)
        self.uri = uri
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

    # ---- paths -------------------------------------------------------
    def path(self, *parts: str) -> str:
        """Path inside the filesystem (no scheme): use with self.fs."""
        return "/".join([self.root.rstrip("/"), *parts])

    def uri_of(self, *parts: str) -> str:
        """Full URI (or local path): use with Ray Data readers/writers.

        Keeps the run URI's options (`?endpoint_override=...&scheme=http`), so a reader in
        another process reaches the same endpoint.
        """
        if self.is_local:
            return self.path(*parts)
        parsed = urlsplit(self.uri)
        userinfo = parsed.netloc.rsplit("@", 1)[0] + "@" if "@" in parsed.netloc else ""
        query = f"?{parsed.query}" if parsed.query else ""
        return f"{parsed.scheme}://{userinfo}{self.path(*parts)}{query}"

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    # ---- small files -------------------------------------------------
    def read_json(self, *parts: str) -> dict:
        with self.fs.open_input_stream(self.path(*parts)) as f:
            return json.loads(f.read().decode())

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Atomic for local storage (write to a temporary name, then rename); object stores commit on close."""
        final = self.path(*parts)
        self.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
        tmp = final if not self.is_local else f"{final}.tmp-{uuid.uuid4().hex[:8]}"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        if tmp != final:
            self.fs.move(tmp, final)

    def write_json(self, obj, *parts: str) -> None:
        self.write_bytes(json.dumps(obj, indent=2, sort_keys=True, default=_json_default).encode(), *parts)

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.path(*parts)) as f:
            return f.read()

    # ---- atomic directories -----------------------------------------
    @contextlib.contextmanager
    def staged_dir(self, name: str):
        """Yield a temporary sibling of `name` to write into; on success it replaces `name`, on error it is deleted."""
        tmp_name = f".tmp-{name.replace('/', '_')}-{uuid.uuid4().hex[:8]}"
        tmp = self.path(tmp_name)
        self.fs.create_dir(tmp, recursive=True)
        try:
            yield tmp_name
        except BaseException:
            self._delete(tmp)
            raise
        faults.point("staged")
        final = self.path(name)
        if not self.is_local:
            # Object stores cannot rename a directory: replace the old one by a copy of the new one.
            # Not atomic: a copy interrupted here leaves a partial directory. The manifest is what says a
            # stage is complete: the pipeline drops a stage's entry before the stage writes anything and
            # records it after this returns, so a partial copy is never taken as complete.
            self._delete(final)
            if faults.armed("copying"):  # the test hook: one file copied, then the process dies
                first = next(i for i in self.fs.get_file_info(pafs.FileSelector(tmp, recursive=True))
                             if i.type == pafs.FileType.File)
                self.fs.copy_file(first.path, final + first.path[len(tmp):])
                faults.point("copying")
            pafs.copy_files(tmp, final, source_filesystem=self.fs, destination_filesystem=self.fs)
            self._delete(tmp)
        elif self.exists(name):
            old = self.path(f".old-{tmp_name}")
            self.fs.move(final, old)
            self.fs.move(tmp, final)
            self._delete(old)
        else:
            self.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
            self.fs.move(tmp, final)

    def copy_dir_from(self, source: "Storage", name: str) -> None:
        """Make `name` here a copy of `name` under `source`, written like any output (staged, then moved
        into place). On one local disk the files are hard links: no bytes copied, and safe, because no
        output is ever changed in place (a stage that runs again writes a new directory)."""
        with self.staged_dir(name) as tmp:
            if self.is_local and source.is_local:
                src = source.path(name)
                for folder, _, files in os.walk(src):
                    dest = os.path.join(self.path(tmp), os.path.relpath(folder, src))
                    os.makedirs(dest, exist_ok=True)
                    for f in files:
                        os.link(os.path.join(folder, f), os.path.join(dest, f))
            else:
                pafs.copy_files(source.path(name), self.path(tmp), source_filesystem=source.fs,
                                destination_filesystem=self.fs)

    def _delete(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError, OSError):
            self.fs.delete_dir(path)

    def delete_dir(self, *parts: str) -> None:
        """Remove a directory and everything in it (nothing happens if it is not there)."""
        self._delete(self.path(*parts))

    def subdirs(self, *parts: str) -> list[str]:
        """Names of the directories directly under `parts`, sorted ([] if it does not exist)."""
        if not self.exists(*parts):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(*parts)))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def files(self, *parts: str, suffix: str = "") -> list[str]:
        """Names of the files directly under `parts` ending in `suffix`, sorted ([] if it does not exist)."""
        if not self.exists(*parts):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(*parts)))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(suffix))

    def digests(self, *parts: str) -> dict[str, dict]:
        """{path relative to the root: {"size", "sha256"}} of the file `parts` or of every file under the
        directory `parts` (streamed, 1 MiB at a time); {} when it does not exist."""
        if not self.exists(*parts):
            return {}
        root = self.path(*parts)
        info = self.fs.get_file_info(root)
        infos = [info] if info.type == pafs.FileType.File else [
            i for i in self.fs.get_file_info(pafs.FileSelector(root, recursive=True)) if i.type == pafs.FileType.File]
        out = {}
        base = self.path()
        for i in sorted(infos, key=lambda i: i.path):
            h = hashlib.sha256()
            with self.fs.open_input_stream(i.path) as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            out[i.path[len(base):].lstrip("/")] = {"size": i.size, "sha256": h.hexdigest()}
        return out

    # ---- Parquet -----------------------------------------------------
    def write_parquet(self, table: pa.Table, *parts: str) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self.write_bytes(sink.getvalue().to_pybytes(), *parts)

    def read_parquet_schema(self, *parts: str) -> pa.Schema:
        """The schema of one file, or of a directory's files (its first file in name order)."""
        import pyarrow.dataset as pads

        return pads.dataset(self.path(*parts), filesystem=self.fs, format="parquet").schema

    def read_parquet(self, *parts: str, columns: list[str] | None = None) -> pa.Table:
        """One file, or every file of a directory in name order."""
        return pq.read_table(self.path(*parts), filesystem=self.fs, columns=columns)


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
