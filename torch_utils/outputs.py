"""The one rule for the files a command writes: an existing output is never replaced unless the user asked
(`--overwrite`), every file appears complete or not at all, and a full disk or an unwritable folder is one line.

    with output_file(path, overwrite) as f:      # f: a binary file on a temp file beside path
        PIL.Image.fromarray(image).save(f, format="PNG")

The temp file (hidden, same folder and suffix) is fsynced and moved into place when the block ends; without
overwrite the move is `os.link` (fails if `path` appeared meanwhile, so nothing is ever replaced, not even a file
created between the check and the write), with overwrite `os.replace`. Any failure removes the temp file; an
OSError (ENOSPC, EROFS, EACCES, ...) becomes a UserError naming the path. Commands also call `refuse_existing` on
the paths they will write before any long work, so a run does not compute for minutes and then refuse.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from torch_utils.errors import UserError

OVERWRITE_HINT = "pass --overwrite to replace it, or choose another output"
_NO_HARD_LINKS = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


def refuse_existing(paths: Iterable[str | os.PathLike], overwrite: bool) -> None:
    """UserError naming the first of `paths` that exists, unless overwrite."""
    if overwrite:
        return
    for path in paths:
        if os.path.lexists(path):
            raise UserError(f"{os.fspath(path)} already exists; {OVERWRITE_HINT}")


def write_error(path: str | os.PathLike, error: OSError) -> UserError:
    """The one line for an OSError while writing `path` (full disk, read-only or unwritable folder, ...)."""
    reason = error.strerror or type(error).__name__
    advice = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space", errno.EROFS: "choose a writable folder",
              errno.EACCES: "fix the folder's permissions", errno.EPERM: "fix the folder's permissions"}  # fmt: skip
    return UserError(f"cannot write {os.fspath(path)}: {reason}; nothing was written there "
                     f"({advice.get(error.errno, 'check the output folder')} and run again)")  # fmt: skip


def temp_path(path: str | os.PathLike) -> str:
    """A fresh hidden sibling of `path` with the same suffix (writers such as np.save and zip look at it)."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{os.path.splitext(name)[1]}")


def publish(tmp: str | os.PathLike, path: str | os.PathLike, overwrite: bool) -> None:
    """Move the finished `tmp` to `path`: os.replace with overwrite, else a link that fails if `path` exists."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise UserError(f"{os.fspath(path)} already exists (it appeared while this command ran); {OVERWRITE_HINT}"
                        ) from None  # fmt: skip
    except OSError as e:
        if e.errno not in _NO_HARD_LINKS:
            raise
        refuse_existing([path], overwrite=False)  # a file system without hard links: check, then rename
        os.replace(tmp, path)
        return
    os.unlink(tmp)


@contextlib.contextmanager
def output_file(path: str | os.PathLike, overwrite: bool) -> Iterator[BinaryIO]:
    """A binary file to write `path` through (module docstring); UserError if it exists and not overwrite."""
    refuse_existing([path], overwrite)
    tmp = temp_path(path)
    try:
        os.makedirs(os.path.dirname(tmp), exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode 0666 & ~umask, like any output
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path, overwrite)
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool) -> str:
    """Write `data` to `path` under the rule; returns the path as a string."""
    with output_file(path, overwrite) as f:
        f.write(data)
    return os.fspath(path)


def save_image(path: str | os.PathLike, image, overwrite: bool) -> str:
    """Write a PIL image or a uint8 array [H, W, 3] (format from the suffix, PNG by default) under the rule."""
    import PIL.Image

    image = image if isinstance(image, PIL.Image.Image) else PIL.Image.fromarray(image)
    fmt = PIL.Image.registered_extensions().get(os.path.splitext(os.fspath(path))[1].lower(), "PNG")
    with output_file(path, overwrite) as f:
        image.save(f, format=fmt)
    return os.fspath(path)
