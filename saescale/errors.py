"""User-facing errors.

Every problem a user can cause (bad option, corrupt file, NaN in a batch, wrong
width, missing data, a full disk) is raised as :class:`SaescaleError` with a one-line
message that names the problem and the fix. The CLI prints ``error: <message>`` and exits
with status 2, without a traceback.
"""

from __future__ import annotations

import errno


class SaescaleError(Exception):
    """A problem with the user's input, stated in one line with the fix."""


def first_line(e: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (its type's name if it has none), at most ``limit`` characters."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]


_REMEDY = {
    errno.ENOSPC: "no space left on the device: free space there or choose a folder on another disk (--out, "
                  "--cache-dir or $SAESCALE_HOME), then rerun; files saved earlier are intact",
    errno.EDQUOT: "disk quota exceeded: free space or choose a folder on another disk (--out, --cache-dir or "
                  "$SAESCALE_HOME), then rerun; files saved earlier are intact",
    errno.EROFS: "read-only file system: choose a writable folder (--out, --cache-dir or $SAESCALE_HOME)",
    errno.EACCES: "permission denied: fix the permissions or choose another folder",
    errno.EPERM: "operation not permitted: fix the permissions or choose another folder",
    errno.ENOTDIR: "a part of this path is a file, not a folder: choose another path",
    errno.EISDIR: "this is a folder, a file was expected: give the file's path",
    errno.ENOENT: "no such file or folder: check the path",
    errno.EEXIST: "a file of this name is in the way: remove it or choose another path",
    errno.ENAMETOOLONG: "file name too long: choose a shorter path",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) and rerun",
}


def os_error_line(e: OSError, path: object = None, action: str = "use") -> str:
    """One line for a failed file operation: ``cannot <action> <path>: <what went wrong and what to do>``."""
    where = path if path is not None else (e.filename if e.filename is not None else "a file")
    remedy = _REMEDY.get(e.errno or -1, f"{e.strerror or e}: check the path and rerun")
    return f"cannot {action} {where}: {remedy}"


def file_error(e: OSError, path: object = None, action: str = "use") -> SaescaleError:
    """:func:`os_error_line` as a SaescaleError, to ``raise ... from None``."""
    return SaescaleError(os_error_line(e, path, action))
