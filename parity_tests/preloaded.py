"""Real processes without the interpreter's start-up: ``PreloadedPython(preload)`` is a Python
process that has run ``preload`` (imports: torch alone takes 2-4 s) and then forks, for each
command, a child that runs ``python -m MODULE ARGS`` or ``python -`` with CODE as that
interpreter would from there on: its own pid, cwd, argv, stdin / stdout / stderr (pipes at
the file-descriptor level), signals and exit status (``returncode`` as ``subprocess`` gives
it, negative for a signal; an exception that escapes prints its traceback and exits 1, a
``KeyboardInterrupt`` ends the process by SIGINT, as CPython does). What it cannot show is
what happens while a fresh interpreter imports: tests of start-up (a signal during the
imports, a reader gone before the first import) start a fresh ``sys.executable``.

Fork-safe by construction: the server runs no torch operation before it forks (no intra-op
thread pool exists; each child starts its own), and OpenBLAS's pool, started by the NumPy
import, is shut down by its own ``pthread_atfork`` handler (seen here: the server has one
thread after a fork, the child starts its own pool). ``gc.freeze()`` before each fork (the
recipe of the ``gc`` docs for a pre-fork server) keeps the child's garbage collections off
the preloaded objects' pages: a child that does nothing cost 0.45 s of CPU instead of 1.4 s
(its interpreter's exit still runs). The server's environment and working folder are fixed
when it starts (they decide what the imports see); a command may add variables read when
it runs (``env=``).

One child at a time: ``popen`` while the previous child is still running kills it first.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading

# The server: runs the preload, then serves requests on the socket (fd argv[2]) until it
# closes. serve() returns only in a child, which then becomes the command: whatever the
# command raises reaches this script's top level, where the interpreter handles it as it
# would in `python -m MODULE` (traceback and status 1, SystemExit's code, SIGINT).
_SERVER = r"""
import gc, json, os, socket, sys
exec(sys.argv[1])
_sock = socket.socket(fileno=int(sys.argv[2]))

def _serve():
    while True:
        msg, fds, _, _ = socket.recv_fds(_sock, 1 << 24, 3)
        if not msg:
            sys.exit(0)
        sys.stdout.flush(), sys.stderr.flush()
        gc.freeze()  # the preloaded objects: the child's collections leave them (and their pages) alone
        pid = os.fork()
        if pid == 0:
            _sock.close()
            return json.loads(msg), fds
        for fd in fds:
            os.close(fd)
        _sock.send(json.dumps({"pid": pid}).encode())
        _, status, usage = os.wait4(pid, 0)
        _sock.send(json.dumps({"returncode": os.waitstatus_to_exitcode(status),
                               "cpu_seconds": usage.ru_utime + usage.ru_stime}).encode())

_request, _fds = _serve()
for _fd, _std in zip(_fds, (0, 1, 2)):
    os.dup2(_fd, _std)
    os.close(_fd)
os.chdir(_request["cwd"])
os.environ.update(_request["env"])
sys.argv = _request["argv"]
if _request["module"]:
    import runpy
    sys.path[0] = os.getcwd()  # what `python -m` puts first
    runpy.run_module(_request["module"], run_name="__main__", alter_sys=True)
else:
    import types
    _main = sys.modules["__main__"] = types.ModuleType("__main__")
    exec(compile(_request["code"], "<stdin>", "exec"), _main.__dict__)
"""


class PreloadedPython:
    """A Python process that has run ``preload`` (source code, e.g. imports) in ``cwd`` with
    ``env`` (default: this process's), and forks a child per command (``python -m module``
    unless told otherwise)."""

    def __init__(self, preload: str, cwd=None, env=None, module: str | None = None):
        self.module = module
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._log = tempfile.TemporaryFile()
        self.cwd = os.path.abspath(cwd or os.getcwd())
        self._server = subprocess.Popen([sys.executable, "-c", _SERVER, preload, str(theirs.fileno())],
                                        pass_fds=[theirs.fileno()], cwd=self.cwd, env=env,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log)
        theirs.close()
        self._child = None

    def _receive(self, timeout=None) -> dict:
        self._sock.settimeout(timeout)
        try:
            msg = self._sock.recv(1 << 16)
        finally:
            self._sock.settimeout(None)
        if not msg:
            self._log.seek(0)
            raise RuntimeError("the preloaded Python ended:\n" + self._log.read().decode(errors="replace"))
        return json.loads(msg)

    def popen(self, args: list, *, module: str | None = None, code: str | None = None, cwd=None, env=None,
              stdin=None) -> "Child":
        """``python -m MODULE *args`` (``module``) or ``python - *args`` reading ``code``, as a
        child: like ``subprocess.Popen(..., stdout=PIPE, stderr=PIPE, text=True)``; ``stdin``
        None is /dev/null, PIPE a pipe."""
        module = module or (self.module if code is None else None)
        assert (module is None) != (code is None)
        if self._child is not None and self._child.returncode is None:
            self._child.kill()
            self._child.wait()
        r_out, w_out = os.pipe()
        r_err, w_err = os.pipe()
        if stdin == subprocess.PIPE:
            r_in, w_in = os.pipe()
        else:
            r_in, w_in = os.open(os.devnull, os.O_RDONLY), None
        request = {"module": module, "code": code, "argv": ["-m" if module else "-", *map(str, args)],
                   "cwd": os.path.abspath(cwd or self.cwd), "env": dict(env or {})}
        socket.send_fds(self._sock, [json.dumps(request).encode()], [r_in, w_out, w_err])
        for fd in (r_in, w_out, w_err):
            os.close(fd)
        self._child = Child(self, self._receive()["pid"], r_out, r_err, w_in)
        return self._child

    def run(self, args: list, *, input: str | None = None, timeout=None, **kwargs) -> subprocess.CompletedProcess:
        """``subprocess.run(..., capture_output=True, text=True)`` of ``popen``'s command."""
        child = self.popen(args, stdin=subprocess.PIPE if input is not None else None, **kwargs)
        out, err = child.communicate(input, timeout=timeout)
        return subprocess.CompletedProcess(child.args, child.returncode, out, err)

    def close(self):
        if self._child is not None and self._child.returncode is None:
            self._child.kill()
            self._child.wait()
        self._sock.close()
        self._server.wait(timeout=60)
        self._log.close()


class Child:
    """A command's process (``PreloadedPython.popen``): ``pid``, ``stdout``, ``stderr``,
    ``stdin`` (text), ``send_signal``, ``kill``, ``wait``, ``communicate``, ``returncode``, and
    once it has ended ``cpu_seconds`` (user + system)."""

    def __init__(self, server, pid, r_out, r_err, w_in):
        self._server, self.pid, self.returncode, self.cpu_seconds = server, pid, None, None
        self.args = ["<preloaded python>", pid]
        self.stdout, self.stderr = open(r_out), open(r_err)
        self.stdin = open(w_in, "w") if w_in is not None else None

    def send_signal(self, sig):
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self):
        self.send_signal(9)

    def wait(self, timeout=None) -> int:
        if self.returncode is None:
            try:
                ended = self._server._receive(timeout)
                self.returncode, self.cpu_seconds = ended["returncode"], ended["cpu_seconds"]
            except TimeoutError:
                raise subprocess.TimeoutExpired(self.args, timeout) from None
        return self.returncode

    def communicate(self, input: str | None = None, timeout=None) -> tuple:
        """Write ``input``, read stdout and stderr to their end, wait: (stdout, stderr)."""
        read = {}

        def drain(name, f):
            read[name] = f.read()
            f.close()

        threads = [threading.Thread(target=drain, args=(n, f), daemon=True)
                   for n, f in (("out", self.stdout), ("err", self.stderr)) if not f.closed]
        for t in threads:
            t.start()
        if self.stdin is not None and not self.stdin.closed:
            try:
                self.stdin.write(input or "")
                self.stdin.close()
            except BrokenPipeError:
                pass
        for t in threads:
            t.join(timeout)
            if t.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(timeout)
        return read.get("out", ""), read.get("err", "")
