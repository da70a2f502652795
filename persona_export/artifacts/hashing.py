"""Hashing that overlaps with the external tool a stage runs, so that recording an input's
or output's sha256 costs no extra wall time on a multi-GB model.

* :class:`BackgroundRecords` fingerprints input files in a thread while the tool reads them
  (the tool and the thread share the page cache).
* :class:`TailHasher` hashes an output while the tool is still appending to it. A tool that
  rewrites its header at the end (llama-quantize does) is detected by re-hashing the head
  and comparing; the file is then hashed again in full.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from persona_export.artifacts.files import CHUNK as _CHUNK
from persona_export.artifacts.files import FileRecord, same_record, sha256_file

_HEAD = 32 * 1024 * 1024


class BackgroundRecords:
    """Fingerprint ``files`` (name -> path) in a thread; :meth:`result` waits for it,
    :meth:`cancel` stops it (the tool failed, the records are not needed)."""

    def __init__(self, files: Mapping[str, Path], known: Mapping[str, Any]) -> None:
        self._files = dict(files)
        self._known = dict(known)
        self._records: dict[str, FileRecord] = {}
        self._error: BaseException | None = None
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hash-inputs", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for name, path in self._files.items():
                if self._cancel.is_set():
                    return
                self._records[name] = self._record(path, self._known.get(name))
        except BaseException as exc:  # re-raised in the caller's thread
            self._error = exc

    def _record(self, path: Path, known: Mapping[str, Any] | None) -> FileRecord:
        st = path.stat()
        if same_record(known, st):
            assert known is not None
            return FileRecord(str(known["sha256"]), st.st_size, st.st_mtime_ns)
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                if self._cancel.is_set():
                    break
                digest.update(chunk)
        return FileRecord(digest.hexdigest(), st.st_size, st.st_mtime_ns)

    def cancel(self) -> None:
        self._cancel.set()
        self._thread.join()

    def result(self) -> dict[str, FileRecord]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._cancel.is_set():
            raise RuntimeError("input hashing was cancelled")
        return self._records


class TailHasher:
    """Hash ``path`` while another process appends to it; call :meth:`finish` after the
    writer has exited to get the file's :class:`FileRecord`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._done = threading.Event()
        self._digest = hashlib.sha256()
        self._head = hashlib.sha256()
        self._nbytes = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="hash-output", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self.path.exists():
                if self._done.is_set():
                    return
                time.sleep(0.05)
            with open(self.path, "rb") as fh:
                while True:
                    finished = self._done.is_set()  # read before the last pass
                    chunk = fh.read(_CHUNK)
                    if chunk:
                        self._update(chunk)
                    elif finished:
                        return
                    else:
                        time.sleep(0.05)
        except BaseException as exc:  # reported by finish()
            self._error = exc

    def _update(self, chunk: bytes) -> None:
        if self._nbytes < _HEAD:
            self._head.update(chunk[: _HEAD - self._nbytes])
        self._digest.update(chunk)
        self._nbytes += len(chunk)

    def stop(self) -> None:
        """Stop reading (the writer failed); safe to call more than once."""
        self._done.set()
        self._thread.join()

    def finish(self) -> FileRecord:
        """The record of the complete file; hashes it again in full if it changed behind
        the reader (a rewritten header) or the reader failed."""
        self.stop()
        st = os.stat(self.path)
        if self._error is None and st.st_size == self._nbytes and self._head_unchanged():
            return FileRecord(self._digest.hexdigest(), st.st_size, st.st_mtime_ns)
        return FileRecord(sha256_file(self.path), st.st_size, st.st_mtime_ns)

    def _head_unchanged(self) -> bool:
        head = hashlib.sha256()
        with open(self.path, "rb") as fh:
            head.update(fh.read(_HEAD))
        return head.hexdigest() == self._head.hexdigest()
