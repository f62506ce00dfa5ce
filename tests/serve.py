"""A real HTTP server for the tests: stdlib `http.server` in a thread, serving a folder on 127.0.0.1."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from pathlib import Path
from typing import Iterator


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no request lines in the test output
        pass


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """Serve `folder` over HTTP for the block; yields its base URL (http://127.0.0.1:<port>)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _Stalling(_Quiet):
    """Serves files, but stops sending after `stall_after` bytes of any file whose name ends in `stall_suffix`
    and keeps the connection open until the server shuts down (a file server that hangs mid-transfer)."""

    stall_after = 0
    stall_suffix = ".tar"
    stop: threading.Event

    def copyfile(self, source, outputfile) -> None:
        if not self.path.endswith(self.stall_suffix):
            return super().copyfile(source, outputfile)
        outputfile.write(source.read(self.stall_after))
        outputfile.flush()
        self.stop.wait(120)  # hold the connection open, sending nothing


@contextlib.contextmanager
def serve_stalling(folder: Path, *, after: int = 1024, suffix: str = ".tar") -> Iterator[str]:
    """Serve `folder` over HTTP; files ending in `suffix` stop after `after` bytes with the connection held open."""
    stop = threading.Event()
    handler = type("Handler", (_Stalling,), {"stall_after": after, "stall_suffix": suffix, "stop": stop})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join()
