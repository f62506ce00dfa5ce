"""Fork server for the fault-injection tests: each `fingerprint` command in its own real process, without re-importing.

Started once by tests/faultkit.py. It imports the package (torch, FAISS,
scikit-learn, ...) once, runs no computation itself, and for each request
(a JSON line on stdin: id, argv, cwd, env, fsize, stdout, stderr) forks a
child that runs `fingerprint.cli.main(argv)` and exits with its code, as the
installed `fingerprint` command would (an escaping exception prints its
traceback and exits 1). The child's stdout and stderr go through pipes that
this server copies to the requested files, so a file-size limit set in the
child (`fsize`: RLIMIT_FSIZE, with SIGXFSZ ignored, so writes fail with EFBIG
like on a full disk) applies to what the command writes, not to its logs.
Events go back as JSON lines on stdout: {"id", "pid"} when started,
{"id", "rc"} when ended (rc -9 for a process killed with SIGKILL).
"""

from __future__ import annotations

import io
import json
import os
import resource
import signal
import sys
import threading
import traceback

_SEND = threading.Lock()


def _send(msg: dict) -> None:
    with _SEND:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()


def _child(req: dict, w_out: int, w_err: int) -> None:
    rc = 1
    try:
        os.dup2(w_out, 1)
        os.dup2(w_err, 2)
        os.close(w_out)
        os.close(w_err)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True)
        sys.stdin = open(os.devnull)
        os.chdir(req["cwd"])
        os.environ.update(req.get("env") or {})
        if req.get("fsize") is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (int(req["fsize"]), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        sys.argv = ["fingerprint", *req["argv"]]
        from fingerprint.cli import main

        rc = main(req["argv"])
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        rc = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(rc)


def _copy(fd: int, path: str) -> None:
    with open(path, "wb") as f:
        while chunk := os.read(fd, 65536):
            f.write(chunk)
            f.flush()
    os.close(fd)


def _collect(req: dict, pid: int, r_out: int, r_err: int) -> None:
    copiers = [threading.Thread(target=_copy, args=a) for a in ((r_out, req["stdout"]), (r_err, req["stderr"]))]
    for t in copiers:
        t.start()
    _, status = os.waitpid(pid, 0)
    for t in copiers:
        t.join()
    _send({"id": req["id"], "rc": os.waitstatus_to_exitcode(status)})


def main() -> None:
    import fingerprint.cli  # noqa: F401  (everything a command needs, imported once)
    import fingerprint.tasks.pipeline  # noqa: F401

    for mod in ("embed", "train", "pack", "score", "index", "evaluate", "report", "run", "inspect", "validate"):
        __import__(f"fingerprint.cli.{mod}")
    _send({"ready": True})
    for line in sys.stdin:
        req = json.loads(line)
        r_out, w_out = os.pipe()
        r_err, w_err = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r_out)
            os.close(r_err)
            _child(req, w_out, w_err)
        os.close(w_out)
        os.close(w_err)
        _send({"id": req["id"], "pid": pid})
        threading.Thread(target=_collect, args=(req, pid, r_out, r_err), daemon=True).start()


if __name__ == "__main__":
    main()
