"""Where a dataset is written: `DatasetWriter`, a zip (ZIP_STORED) or a new folder that appears at its destination
only when complete, and `check_dest`, the same refusal the CLI runs before any work (torch_utils.outputs' rule:
an existing output is never replaced without --overwrite)."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

from torch_utils.errors import UserError
from torch_utils.outputs import publish, refuse_existing, write_error


def check_dest(dest: str | os.PathLike, overwrite: bool) -> None:
    """One line if a dataset cannot go to `dest`: an existing file (a zip without overwrite, anything at a folder
    path) or a folder that is not empty (never replaced, even with overwrite)."""
    dest = Path(dest)
    if dest.suffix.lower() == ".zip":
        refuse_existing([dest], overwrite)
    elif dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(f"--dest {dest} exists and is not an empty folder; pick a new path or a .zip")


class DatasetWriter:
    """Writes images + dataset.json into a zip (ZIP_STORED) or a new folder; visible at `dest` only on success.

    Everything goes to a hidden temporary sibling first; `close()` renames it into place (atomic on one file
    system), an exception inside the `with` block deletes it, so a crash never leaves a half dataset. An existing
    `dest` file is refused unless overwrite (torch_utils.outputs); a folder is written only where none or an empty
    one exists. A full disk or an unwritable folder is one UserError line, with the temporary output removed.
    """

    def __init__(self, dest: str | os.PathLike, overwrite: bool = False) -> None:
        self.dest, self.overwrite = Path(dest), overwrite
        self.is_zip = self.dest.suffix.lower() == ".zip"
        check_dest(self.dest, overwrite)
        self.tmp = self.dest.with_name(f".{self.dest.name}.{os.getpid()}.tmp")
        self._zip: zipfile.ZipFile | None = None
        try:
            self.dest.parent.mkdir(parents=True, exist_ok=True)
            if self.is_zip:
                self._zip = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_STORED)
            else:
                self.tmp.mkdir()
        except OSError as e:
            self.abort()
            raise write_error(self.dest, e) from None

    def write(self, name: str, data: bytes) -> None:
        """Store `data` under the relative name `name` (forward slashes)."""
        if self._zip is not None:
            self._zip.writestr(name, data)
        else:
            path = self.tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def write_json(self, name: str, obj: Any) -> None:
        """Store `obj` as compact UTF-8 JSON."""
        self.write(name, json.dumps(obj, separators=(",", ":")).encode("utf-8"))

    def close(self) -> None:
        """Finish and atomically move the result to `dest` (an existing zip only with overwrite)."""
        if self._zip is not None:
            self._zip.close()
        if self.is_zip:
            publish(self.tmp, self.dest, self.overwrite)
            return
        if self.dest.is_dir():
            self.dest.rmdir()  # empty (checked in __init__); a rename cannot replace a directory
        os.rename(self.tmp, self.dest)

    def abort(self) -> None:
        """Delete the temporary output (even when closing it fails again, e.g. on a full disk)."""
        try:
            if self._zip is not None:
                self._zip.close()
        except Exception:  # a zip whose writes failed may fail to close too; the file goes either way
            pass
        finally:
            if self.tmp.is_dir():
                shutil.rmtree(self.tmp, ignore_errors=True)
            else:
                self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        closing_failed = False
        if exc is None:
            try:
                self.close()
                return
            except BaseException as e:  # e.g. the disk filled up while the zip's directory was written
                exc, closing_failed = e, True
        self.abort()
        if isinstance(exc, OSError):  # ENOSPC, EROFS, EACCES: one line, and no temporary file left behind
            raise write_error(self.dest, exc) from None
        if closing_failed:
            raise exc
