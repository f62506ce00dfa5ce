"""One-line user errors: `FingerprintError` and the text of an operating-system error."""

from __future__ import annotations

import errno
import os


class FingerprintError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""


def os_error_text(e: OSError) -> str:
    """`No space left on device (ENOSPC)`: an OSError's cause in one line, without the file name."""
    code = errno.errorcode.get(e.errno or 0)
    text = e.strerror or (str(e.args[0]) if e.args else type(e).__name__)
    return f"{text} ({code})" if code else text


def os_error(e: OSError, path: str | os.PathLike | None = None) -> FingerprintError:
    """A FingerprintError `<file>: <cause>` for an OSError (the error's own file name first, else `path`)."""
    where = e.filename if e.filename is not None else path
    return FingerprintError(f"{where}: {os_error_text(e)}" if where is not None else os_error_text(e))
