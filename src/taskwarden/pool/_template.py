"""Workers forked from a warm template process, in a few milliseconds each.

Starting a worker through loky's process context costs a fork, an exec and a
fresh interpreter's imports (60-70 ms here). The template pays that once: it
is started through loky's context like a worker, imports taskwarden's worker
module, cloudpickle and the modules the user's initializer needs (it never
runs the initializer, nor any task), and then forks a worker on request.
It serves every start but the pool's first: that worker starts the plain way,
beside the template (see ``Forker``), so that a cold start costs one
interpreter's start, as it does for loky's own executor.

Safety. The template is single-threaded (it checks: a module that starts a
thread at import is not imported there, the worker imports it itself) and
holds no lock when it forks, so a forked worker starts from a consistent
state. Each worker gets its own channel: the supervisor makes a socket pair
and passes one end to the template with SCM_RIGHTS; the template forks, the
worker keeps that end, and the template closes its copy at once (it has no
thread that could fork in between), so the supervisor's end stays the only
other end and a worker whose supervisor dies sees its channel close (EOF), as
a worker started through loky does.

Exit status. The workers are the template's children, not the supervisor's.
For each one the template opens a pidfd and sends a duplicate to the
supervisor, which watches it to see the death at once (and signals through
it, so a recycled pid can never be hit). The template reads the exit status
without reaping (``waitid(..., WNOWAIT)``) and reports it; it reaps the
zombie only when the supervisor releases it, so the pid stays the worker's
while the supervisor may still kill its tree by pid. (A worker the loop
killed is reported gone as soon as its pidfd says so, and released then:
nobody reads that exit status.) If the template dies, its workers live on
(re-parented to init, which reaps them; they still die with their supervisor,
through their channels): their exit statuses are then unknown, and the pool
reports them as such. The template itself leaves when its control socket
closes: the pool closed, or the supervisor died.

The tasks' modules. A worker forked before its task's module was imported
imports it on its first task (10-40 ms under load, inside the task's time
limit). So the pool reads the first runs it sends each new worker (the first
``PREFIX`` bytes of ``LEARN_RUNS`` payloads: never every payload) for the
modules they name (``modules_of``) and asks the template to import each new
one. The template imports one only once it is known harmless: first in a
probe child it forks (in a process group of its own), which must exit 0 within
``PROBE_TIMEOUT``, single-threaded, leaving no process in its group; then in
the template itself, when no request waits. Forks are served while a probe
runs. A module that fails is refused for good (the pool never asks again). If
the template has threads after importing one anyway, it says so (TAINTED) and
leaves: the pool starts a new template (no death counted), which is asked for
the modules imported so far but that one.

The wire between the two is fixed-size records (``_REC``), each request to
fork carrying one descriptor, each SPAWNED answer one pidfd. Descriptors
arrive in order with the stream, so they are matched to records in order.
A record about a module (IMPORT, IMPORTED, REFUSED, TAINTED) is followed by
the module's name, its length in the record's value.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gc
import importlib
import logging
import multiprocessing.process
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from .base import Reactor

log = logging.getLogger("taskwarden")

_REC = struct.Struct("=iiq")  # (op, token, value)

# supervisor -> template
_FORK = 1  # (FORK, wid, 0) + the worker's end of its channel
_RELEASE = 2  # (RELEASE, wid, 0): reap the worker's zombie (its exit was reported)
# template -> supervisor
_HELLO = 10  # (HELLO, threads, pid): imports done; threads > 1: cannot fork safely
_SPAWNED = 11  # (SPAWNED, wid, pid) + a pidfd of the worker
_FORK_FAILED = 12  # (FORK_FAILED, wid, errno)
_EXITED = 13  # (EXITED, wid, status): exit code, or -signal
# Preloading the tasks' modules: a name record is (op, 0, length) + the name in UTF-8.
_IMPORT = 3  # supervisor -> template: import this module if it is harmless
_IMPORTED = 14  # it is imported: workers forked from now on have it
_REFUSED = 15  # its probe failed (error, hang, thread, process left): never again
_TAINTED = 16  # imported, but the template then had threads: it leaves, restart it
_NAMED = frozenset((_IMPORT, _IMPORTED, _REFUSED, _TAINTED))

_MAX_FDS = 64  # descriptors taken per read (each record carries one at most)

BASE_PRELOAD = ("taskwarden.pool._worker", "cloudpickle", "pickle", "traceback")

START_TIMEOUT = 60.0  # seconds for the template to start and import its modules
PROBE_TIMEOUT = 2.0  # seconds a probe child may take to import a task's module
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
MAX_NAME = 256  # bytes of a module name the template is asked to import
PREFIX = 4096  # bytes of a payload read for the modules it names
LEARN_RUNS = 4  # runs of a fresh worker's first batch read for their modules


@functools.cache
def supported() -> bool:
    """Can workers be forked from a template here (fork, pidfds, fd passing)? The
    kernel is asked too: pidfds need Linux 5.3, ``waitid`` on one 5.4."""
    if not (
        hasattr(os, "fork")
        and hasattr(os, "pidfd_open")
        and hasattr(os, "P_PIDFD")
        and hasattr(os, "waitid")
        and hasattr(signal, "pidfd_send_signal")
        and hasattr(socket, "send_fds")
    ):
        return False
    try:
        fd = os.pidfd_open(os.getpid())
    except OSError:
        return False
    try:
        os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: the kernel understood the question
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def modules_of(payload: bytes | None) -> tuple[str, ...]:
    """The modules a pickle imports when loaded (read from its opcodes: nothing is
    unpickled or run). Modules of ``__main__`` or not importable by name are left
    out: the worker loads those itself."""
    if payload is None:
        return ()
    import pickletools  # (the supervisor's only: not imported by the template's boot)

    found: list[str] = []
    memo: dict[int, Any] = {}
    stack: list[Any] = []  # the last values pushed (strings, or None for anything else)
    try:
        for op, arg, _ in pickletools.genops(payload):
            name = op.name
            if name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                stack.append(arg)
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else None
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(arg or 0)] = stack[-1] if stack else None
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                stack.append(memo.get(int(arg or 0)))
            elif name == "STACK_GLOBAL":
                if len(stack) >= 2 and isinstance(stack[-2], str):
                    found.append(stack[-2])
                stack.append(None)
            elif name in ("GLOBAL", "INST"):
                found.append(str(arg).split(" ", 1)[0])
                stack.append(None)
            else:
                stack.append(None)
            del stack[:-2]
    except Exception:
        pass  # a pickle we cannot read through: preload what was found so far
    out: list[str] = []
    for mod in found:
        if mod and mod != "__main__" and not mod.startswith("__mp_main__") and mod not in out:
            out.append(mod)
    return tuple(out)


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


# ------------------------------------------------------------- in the template


def template_main(
    conn: Any,
    worker_args: tuple[int, bytes | None, int | None],
    preload: tuple[str, ...],
) -> None:
    """Entry point of the template process (started through loky's process context)."""
    ctl = socket.socket(fileno=os.dup(conn.fileno()))
    conn.close()
    # A terminal's Ctrl-C reaches the whole process group: it is the workers' business
    # (a running task gets KeyboardInterrupt), not the template's.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for mod in BASE_PRELOAD:
        importlib.import_module(mod)
    base_threads = _threads()
    if base_threads == 1:
        for mod in preload:
            try:
                importlib.import_module(mod)
            except BaseException:
                continue  # the worker meets the same error when it loads the initializer
            if _threads() > 1:
                break  # reported below: the supervisor starts a template without them
    threads = _threads()
    # An import may have ignored SIGCHLD (or set a handler that reaps): the template
    # needs its workers' zombies (their exit statuses). The workers get it back.
    sigchld = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # What the imports made is never freed here: keep the collector away from it, so
    # that a worker does not copy those pages for the collector's bookkeeping. (No
    # collection first: it would cost the first worker ~10 ms, to free next to nothing.)
    gc.freeze()
    try:
        _send(ctl, _HELLO, threads, os.getpid())
    except OSError:
        return  # the pool closed while we started
    if threads > 1:
        return
    _Template(ctl, worker_args, sigchld).serve()
    # Out at once, as a worker leaves: the pool's close waits for this exit, and the
    # interpreter's teardown (loky and all it imported) would be most of it.
    from ._worker import exit_process

    exit_process(0)


def _send(sock: socket.socket, op: int, token: int, value: int, fds: Iterable[int] = ()) -> None:
    data = _REC.pack(op, token, value)
    fds = list(fds)
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.sendall(data)


def _send_name(sock: socket.socket, op: int, name: str, token: int = 0) -> None:
    data = name.encode()
    sock.sendall(_REC.pack(op, token, len(data)) + data)


def _records(buf: bytearray) -> list[tuple[int, int, int, str]]:
    """Take the whole records at the front of ``buf`` (a name record only once all of
    its name is there): (op, token, value, name or "")."""
    out: list[tuple[int, int, int, str]] = []
    pos = 0
    while len(buf) - pos >= _REC.size:
        op, token, value = _REC.unpack_from(buf, pos)
        end = pos + _REC.size
        name = ""
        if op in _NAMED:
            if len(buf) - end < value:
                break
            name = bytes(buf[end:end + value]).decode("utf-8", "replace")
            end += value
        out.append((op, token, value, name))
        pos = end
    del buf[:pos]
    return out


def importable(name: str) -> bool:
    """Could ``name`` be a module imported by name (dotted identifiers, not ``__main__``)?"""
    if not name or len(name.encode()) > MAX_NAME or name.split(".", 1)[0] in (
        "__main__", "__mp_main__"
    ):
        return False
    return all(part.isidentifier() for part in name.split("."))


class _Template:
    """The template's loop: fork on request, report exits, reap on release, and import
    the tasks' modules the supervisor names, each once a probe child showed it harmless."""

    def __init__(self, ctl: socket.socket, worker_args: tuple[int, bytes | None, int | None],
                 sigchld: Any = signal.SIG_DFL) -> None:
        self.ctl = ctl
        self.worker_args = worker_args
        self.sigchld = sigchld  # what the imports made of SIGCHLD: the workers' own
        self.buf = bytearray()
        self.fds: deque[int] = deque()
        self.by_pidfd: dict[int, int] = {}  # pidfd -> wid, every child not reaped
        self.pidfd_of: dict[int, int] = {}  # wid -> pidfd
        self.released: set[int] = set()  # released before their exit was seen
        self.poller = select.poll()
        self.poller.register(ctl.fileno(), select.POLLIN)
        # Preloading: names to probe, names that passed (imported here when idle), the
        # probe child running (name, pid, pidfd, deadline), and names decided already.
        self.to_probe: deque[str] = deque()
        self.to_import: deque[str] = deque()
        self.probe: tuple[str, int, int, float] | None = None
        self.decided: set[str] = set()

    def serve(self) -> None:
        try:
            self._serve()
        except (BrokenPipeError, ConnectionResetError):
            pass  # an answer found the supervisor gone (the pool closed): so are we
        finally:
            if self.probe is not None:
                _killpg(self.probe[1])  # a probe never outlives its template

    def _serve(self) -> None:
        while True:
            timeout: float | None = None
            if self.to_import:
                timeout = 0  # import only when no request waits
            elif self.probe is not None:
                timeout = max(0.0, self.probe[3] - time.monotonic()) * 1000 + 1
            events = self.poller.poll(timeout)
            for fd, _ in events:
                if fd == self.ctl.fileno():
                    if not self._read():
                        return  # the supervisor is gone: so are we (workers see EOF too)
                elif fd in self.by_pidfd:
                    self._exited(fd)
                elif self.probe is not None and fd == self.probe[2]:
                    self._probed()
            if self.probe is not None and time.monotonic() >= self.probe[3]:
                self._probed(timed_out=True)
            if not events and self.to_import and not self._import(self.to_import.popleft()):
                return  # tainted: the supervisor starts a template without that module
            if self.probe is None and self.to_probe:
                self._start_probe(self.to_probe.popleft())

    def _read(self) -> bool:
        try:
            data, fds, _, _ = socket.recv_fds(self.ctl, 4096, _MAX_FDS, socket.MSG_CMSG_CLOEXEC)
        except InterruptedError:
            return True
        except OSError:
            return False
        self.fds.extend(fds)
        if not data:
            return False
        self.buf += data
        for op, token, _, name in _records(self.buf):
            if op == _FORK:
                self._fork(token, self.fds.popleft())
            elif op == _RELEASE:
                self._release(token)
            elif op == _IMPORT:
                self._offered(name)
        return True

    # ---------------------------------------------------------- preloading
    def _offered(self, name: str) -> None:
        if name in self.decided or not importable(name):
            return
        self.decided.add(name)
        if name in sys.modules:
            _send_name(self.ctl, _IMPORTED, name)
        else:
            self.to_probe.append(name)

    def _start_probe(self, name: str) -> None:
        """Import ``name`` first in a short-lived child: harmless if it exits 0 in time,
        single-threaded, and leaves no process behind (it runs in a process group of its
        own, killed whole afterwards)."""
        try:
            pid = os.fork()
        except OSError:
            _send_name(self.ctl, _REFUSED, name)
            return
        if pid == 0:
            _probe_child(name, [self.ctl.fileno(), *self.by_pidfd, *self.fds])
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # (the child does it too: whichever runs first)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # pragma: no cover - pidfds were checked by the supervisor
            _killpg(pid)
            os.waitpid(pid, 0)
            _send_name(self.ctl, _REFUSED, name)
            return
        self.poller.register(pidfd, select.POLLIN)
        self.probe = (name, pid, pidfd, time.monotonic() + PROBE_TIMEOUT)

    def _probed(self, *, timed_out: bool = False) -> None:
        assert self.probe is not None
        name, pid, pidfd, _ = self.probe
        self.probe = None
        self.poller.unregister(pidfd)
        if timed_out:
            _killpg(pid)
        info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
        os.close(pidfd)
        left = _killpg(pid)  # whatever the import started and left running
        if not timed_out and not left and info is not None and _status(info) == 0:
            self.to_import.append(name)
        else:
            _send_name(self.ctl, _REFUSED, name)

    def _keep_sigchld(self) -> None:
        """A module just imported may have ignored SIGCHLD (some libraries do): the
        kernel would then reap the workers and their exit statuses be lost. The template
        keeps the default; the workers get what the module made of it."""
        prev = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if prev not in (signal.SIG_DFL, None):
            self.sigchld = prev

    def _import(self, name: str) -> bool:
        """Import a module that passed its probe; False if the template then has threads
        (it said so: it leaves, and the supervisor starts one without the module)."""
        try:
            importlib.import_module(name)
        except BaseException:
            self._keep_sigchld()
            _send_name(self.ctl, _REFUSED, name)
            return True
        self._keep_sigchld()
        threads = _threads()
        if threads > 1:
            _send_name(self.ctl, _TAINTED, name, threads)
            return False
        gc.freeze()  # as after the first imports: never collected here
        _send_name(self.ctl, _IMPORTED, name)
        return True

    def _fork(self, wid: int, channel: int) -> None:
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(channel)
            _send(self.ctl, _FORK_FAILED, wid, exc.errno or errno.EAGAIN)
            return
        if pid == 0:
            # Nothing of the template's may stay open in the worker: its control socket,
            # the pidfds of the other workers, channels of forks still to come.
            close = [self.ctl.fileno(), *self.by_pidfd, *self.fds]
            if self.probe is not None:
                close.append(self.probe[2])
            _worker_child(wid, channel, close, self.worker_args, self.sigchld)
        os.close(channel)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:  # pragma: no cover - pidfds were checked by the supervisor
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            _send(self.ctl, _FORK_FAILED, wid, exc.errno or errno.EINVAL)
            return
        self.by_pidfd[pidfd] = wid
        self.pidfd_of[wid] = pidfd
        self.poller.register(pidfd, select.POLLIN)
        _send(self.ctl, _SPAWNED, wid, pid, [pidfd])

    def _exited(self, pidfd: int) -> None:
        # Read the status, but leave the zombie: its pid stays the worker's until the
        # supervisor is done with it (it may be killing the worker's tree by pid).
        info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is None:
            # Not (yet) an exit: a stale event of this poll round, for a pidfd that was
            # closed (its worker released) and whose number a new worker's took since.
            return
        wid = self.by_pidfd[pidfd]
        self.poller.unregister(pidfd)
        if wid in self.released:
            self._reap(wid)
            return
        _send(self.ctl, _EXITED, wid, _status(info))

    def _release(self, wid: int) -> None:
        pidfd = self.pidfd_of.get(wid)
        if pidfd is None:
            return
        if select.select([pidfd], [], [], 0)[0]:
            self._reap(wid)
        else:
            self.released.add(wid)

    def _reap(self, wid: int) -> None:
        pidfd = self.pidfd_of.pop(wid)
        del self.by_pidfd[pidfd]
        self.released.discard(wid)
        with contextlib.suppress(KeyError):
            self.poller.unregister(pidfd)  # (released before its exit was polled)
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
        os.close(pidfd)


def _killpg(pgid: int) -> bool:
    """SIGKILL a probe's process group; True if any process was left in it."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        return False
    return True


def _probe_child(name: str, close: list[int]) -> NoReturn:
    """In a probe child: import ``name``; exit 0 if that worked and left one thread."""
    code = 1
    try:
        template = os.getppid()
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
        with contextlib.suppress(Exception):  # it dies with its template (Linux)
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != template:
            raise SystemExit  # the template died already: exit 1
        for fd in close:
            with contextlib.suppress(OSError):
                os.close(fd)
        importlib.import_module(name)
        code = 0 if _threads() == 1 else 2
    finally:
        os._exit(code)


def _status(info: Any) -> int:
    if info.si_code == os.CLD_EXITED:
        return int(info.si_status)
    return -int(info.si_status)  # killed or dumped: the signal, as multiprocessing says it


def _worker_child(
    wid: int,
    channel: int,
    close: list[int],
    worker_args: tuple[int, bytes | None, int | None],
    sigchld: Any = signal.SIG_DFL,
) -> NoReturn:
    """In a freshly forked worker: shed the template's descriptors, run the worker."""
    from ._worker import exit_process, worker_process

    try:
        for fd in close:
            with contextlib.suppress(OSError):
                os.close(fd)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if sigchld is not None:  # (None: a handler not set from Python, left as it is)
            signal.signal(signal.SIGCHLD, sigchld)
        # As multiprocessing does in a forked child: its hooks, not the template's exits.
        import multiprocessing.util as mp_util

        # (private names of multiprocessing: reached through the module's namespace)
        vars(mp_util)["_finalizer_registry"].clear()
        vars(mp_util)["_run_after_forkers"]()
        proc = multiprocessing.process.current_process()
        proc.name = f"taskwarden-worker-{wid}"
        vars(multiprocessing.process)["_children"] = set()
        sock = socket.socket(fileno=channel)
    except BaseException:
        with contextlib.suppress(BaseException):
            traceback.print_exc()
        exit_process(1)
    worker_process(sock, *worker_args)


# ----------------------------------------------------------- in the supervisor


def _sigkill(pid: int) -> None:
    """SIGKILL our own child (not reaped yet: the pid is still its); loky's Popen has
    no ``kill()``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class TemplateUnavailable(Exception):
    """The template could not start (or cannot fork safely): use the plain path."""


# What the template said, as the supervisor reads it. (Plain classes, not dataclasses:
# this module is the template process's too, and its boot need not build them.)
class Spawned:
    __slots__ = ("pid", "pidfd", "wid")

    def __init__(self, wid: int, pid: int, pidfd: int) -> None:
        self.wid = wid
        self.pid = pid
        self.pidfd = pidfd  # the supervisor's own: close it when done


class ForkFailed:
    __slots__ = ("error", "wid")

    def __init__(self, wid: int, error: int) -> None:
        self.wid = wid
        self.error = error


class Exited:
    __slots__ = ("status", "wid")

    def __init__(self, wid: int, status: int) -> None:
        self.wid = wid
        self.status = status  # exit code, or -signal


class Preloaded:
    __slots__ = ("name", "ok")

    def __init__(self, name: str, ok: bool) -> None:
        self.name = name
        self.ok = ok  # imported in the template; else refused (never offered again)


TemplateEvent = Spawned | ForkFailed | Exited | Preloaded


class Template:
    """The supervisor's handle on one template process.

    ``start`` blocks (a process start and its imports): call it off the loop.
    Everything else is the loop's: ``fork`` and ``release`` write one small
    record, ``read`` takes what the template said so far without blocking.
    """

    def __init__(
        self,
        ctx: Any,
        worker_args: tuple[int, bytes | None, int | None],
        preload: tuple[str, ...] = (),
    ) -> None:
        self._ctx = ctx
        self._worker_args = worker_args
        self.preload = preload
        self.process: Any = None
        self.pid = 0
        self.pidfd = -1  # watch it: readable once the template is dead
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._fds: deque[int] = deque()
        self.threads = 0
        self.dead = False
        self.imported: set[str] = set()  # the tasks' modules it imported since it started
        self.tainted = False  # it had threads after importing one: it left on its own
        self._lock = threading.Lock()  # start() on one thread, abort() on another
        self._aborted = False

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the process and wait until its imports are done."""
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=template_main,
            args=(child, self._worker_args, self.preload),
            name="taskwarden-worker-template",  # its workers show this command line too
        )
        try:
            process.start()
        finally:
            child.close()
        # Only this pool reaps it (see LokyPool's spawner).
        vars(multiprocessing.process)["_children"].discard(process)
        with self._lock:
            self.process = process
            if self._aborted:
                _sigkill(process.pid)  # its hello never comes: start() fails below
        self.pid = process.pid
        self._sock = socket.socket(fileno=os.dup(parent.fileno()))
        parent.close()
        try:
            with self._lock:  # an abort from now on shuts the socket down (see abort)
                if self._aborted:
                    raise TemplateUnavailable("the pool closed while the template started")
            self.pidfd = os.pidfd_open(self.pid)
            self._sock.settimeout(timeout)
            hello = self._sock.recv(_REC.size, socket.MSG_WAITALL)
            if len(hello) != _REC.size:
                raise TemplateUnavailable("the template process died while starting")
            op, threads, _ = _REC.unpack(hello)
            if op != _HELLO:
                raise TemplateUnavailable(f"the template process said {op!r}, not hello")
            self.threads = threads
            if threads > 1:
                raise TemplateUnavailable(
                    f"the template process has {threads} threads after its imports"
                )
            self._sock.setblocking(False)
        except BaseException as exc:
            self.close()
            if isinstance(exc, TemplateUnavailable):
                raise
            raise TemplateUnavailable(f"the template process did not start: {exc!r}") from exc

    def abort(self) -> None:
        """From another thread: make a ``start`` in progress fail now."""
        with self._lock:
            self._aborted = True
            if self.process is not None:
                _sigkill(self.process.pid)
            # Its death alone may be no end-of-file for the wait on its hello: a child
            # forked off this process meanwhile holds a copy of the template's end.
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)

    def resume(self) -> None:
        """SIGCONT the template (a no-op unless stopped): a task may have stopped it
        (its worker's parent), and the supervisor needs its word now (a fork, an exit)."""
        if self.pidfd >= 0 and not self.dead:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGCONT)

    def fileno(self) -> int:
        """The control socket: readable when the template has something to say."""
        assert self._sock is not None
        return self._sock.fileno()

    def fork(self, wid: int) -> socket.socket | None:
        """Ask for a worker; returns the supervisor's end of its channel (``Spawned``
        follows from ``read``), or None if the request could not be made (then
        ``dead`` tells whether the template is gone)."""
        if self.dead or self._sock is None:
            return None
        self.resume()
        ours, theirs = socket.socketpair()
        try:
            _send(self._sock, _FORK, wid, 0, [theirs.fileno()])
        except BlockingIOError:  # its socket is full (the template is far behind)
            ours.close()
            return None
        except OSError:
            ours.close()
            self.dead = True
            return None
        finally:
            theirs.close()
        return ours

    def release(self, wid: int) -> None:
        """The worker's exit is taken: the template may reap it."""
        if self.dead or self._sock is None:
            return
        self.resume()
        with contextlib.suppress(OSError):
            _send(self._sock, _RELEASE, wid, 0)

    def read(self) -> list[TemplateEvent]:
        """What the template said so far (never blocks). Sets ``dead`` at its EOF."""
        out: list[TemplateEvent] = []
        if self._sock is None:
            return out
        while not self.dead:
            try:
                data, fds, _, _ = socket.recv_fds(self._sock, 4096, _MAX_FDS,
                                                  socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data, fds = b"", []
            self._fds.extend(fds)
            if not data:
                self.dead = True
                break
            self._buf += data
        for op, token, value, name in _records(self._buf):
            if op == _SPAWNED:
                out.append(Spawned(token, value, self._fds.popleft()))
            elif op == _FORK_FAILED:
                out.append(ForkFailed(token, value))
            elif op == _EXITED:
                out.append(Exited(token, value))
            elif op == _IMPORTED:
                self.imported.add(name)
                out.append(Preloaded(name, True))
            elif op in (_REFUSED, _TAINTED):
                self.tainted = self.tainted or op == _TAINTED
                out.append(Preloaded(name, False))
        return out

    def offer(self, name: str) -> None:
        """Ask the template to import ``name`` (once a probe child showed it harmless);
        a ``Preloaded`` event answers."""
        if self.dead or self._sock is None:
            return
        with contextlib.suppress(OSError):
            _send_name(self._sock, _IMPORT, name)

    def wait_for(self, done: Any, timeout: float) -> list[TemplateEvent]:
        """Read (blocking) until ``done(events so far)`` is true, the template dies or
        ``timeout`` passes; every event read."""
        out: list[TemplateEvent] = []
        deadline = time.monotonic() + timeout
        while not done(out) and not self.dead and self._sock is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock = self._sock.fileno()
            ready, _, _ = select.select([sock, self.pidfd], [], [], remaining)
            if sock in ready:
                out.extend(self.read())
            elif ready:  # the template died; what it wrote before is still read first
                out.extend(self.read())
                if not self.dead:
                    self.dead = True
        return out

    def exited(self) -> bool:
        """Has the template process died (its pidfd readable)?"""
        if self.pidfd < 0:
            return True
        return bool(select.select([self.pidfd], [], [], 0)[0])

    def close(self) -> None:
        """Stop the template (its workers are not touched) and reap it."""
        self.dead = True
        if self._sock is not None:
            # Shut down, not only closed: a child forked off this process may hold a copy
            # of our end, and the template must see the end-of-file all the same.
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        while self._fds:
            with contextlib.suppress(OSError):
                os.close(self._fds.popleft())
        if self.process is not None:
            # Its control socket closed: it leaves at once. A template stuck in its
            # imports does not: kill it.
            self.process.join(1.0)
            if self.process.exitcode is None:
                _sigkill(self.process.pid)
                self.process.join()
            self.process = None
        if self.pidfd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
            self.pidfd = -1


class _Kid:
    __slots__ = ("pid", "template")

    def __init__(self, pid: int, template: Template) -> None:
        self.pid = pid
        self.template = template  # its forker: while that lives, it holds the exit status


class Forker:
    """The pool's side of forking workers from a template (on the loop thread).

    ``request(wid)`` asks for a worker and returns at once: False means "use the
    plain path" (no template here, or it failed for good, or this is the pool's
    first worker: see below). Later, on the loop thread, ``on_spawned(wid, sock,
    pid, pidfd)`` hands over a forked worker (the pool owns the socket and the pidfd
    from then on), or ``on_failed(wid)`` asks the pool to start it the plain way.

    The template starts on a thread of its own (it is a process start, like a
    worker's) when the pool calls ``start``, right after starting its first worker
    the plain way: a template is up no sooner than a worker started the plain way
    (it is one), and a forked worker comes a few milliseconds after that, so the
    first result would wait for both. With ``start(hold=True)`` it waits until the
    pool calls ``release`` (once that first worker has started: on a machine with
    few CPUs, two interpreters starting side by side slow each other, and the first
    result waits for the slower start); otherwise the two start side by side, as
    loky's own executor starts its workers. The requests made meanwhile (the other
    first workers, the spare) wait for the template, so no more than two ever start
    at once, however many workers the pool has. One that dies is restarted at once
    (after ``MAX_DEATHS`` deaths the pool keeps to the plain path).
    ``on_status(wid)`` says an exit status arrived for a worker whose death the pool
    may be waiting to report (``exit_status``).
    """

    MAX_DEATHS = 3

    def __init__(
        self,
        ctx: Any,
        worker_args: tuple[int, bytes | None, int | None],
        preload: tuple[str, ...],
        *,
        on_spawned: Callable[[int, socket.socket, int, int], None],
        on_failed: Callable[[int], None],
        on_status: Callable[[int], None],
    ) -> None:
        self._ctx = ctx
        self._worker_args = worker_args
        self._preload = preload
        self._on_spawned = on_spawned
        self._on_failed = on_failed
        self._on_status = on_status
        self._reactor: Reactor | None = None
        self.state = "idle" if supported() else "off"  # idle, held, starting, up, off
        self.template: Template | None = None
        self.deaths = 0
        self._starting: Template | None = None
        self._thread: threading.Thread | None = None
        self._started: deque[Template | None] = deque()  # from the starting thread
        self._waiting: list[int] = []  # requested while the template starts
        self._asked: dict[int, socket.socket] = {}  # fork requested, no answer yet
        self._kids: dict[int, _Kid] = {}  # forked, exit not taken yet
        self._statuses: dict[int, int] = {}  # exits reported, not taken yet
        # The tasks' modules: asked of every template (in order), and those refused.
        self.wanted: dict[str, None] = {}
        self.refused: set[str] = set()

    def bind(self, reactor: Reactor) -> None:
        self._reactor = reactor

    # --------------------------------------------------------------- requests
    def request(self, wid: int) -> bool:
        if self.state == "up":
            self._ask(wid)
            return True
        if self.state in ("starting", "held"):
            self._waiting.append(wid)
            return True
        return False  # off, or idle: the pool's first worker (then the pool calls start)

    def start(self, *, hold: bool = False) -> None:
        """Start the template, unless it is started (or off). The pool calls it once it
        has started its first worker the plain way, whose start so goes out first.
        With ``hold``, requests wait from now on, but the template starts only at
        ``release``."""
        if self.state == "idle":
            if hold:
                self.state = "held"
            else:
                self._start()

    def release(self) -> None:
        """Start a template held back by ``start(hold=True)``."""
        if self.state == "held":
            self._start()

    def _ask(self, wid: int) -> None:
        t = self.template
        sock = t.fork(wid) if t is not None else None
        if sock is not None:
            self._asked[wid] = sock
        elif t is not None and not t.dead:
            self._on_failed(wid)  # it cannot take the request now: the plain way
        else:  # the template is gone (its exit callback may not have run yet)
            self._waiting.append(wid)
            self._lost()

    def cancel(self, wid: int) -> bool:
        """Drop a request not yet made of a template (it is still starting); False
        if it was made (its worker comes, or the plain path has it)."""
        if wid in self._waiting:
            self._waiting.remove(wid)
            return True
        return False

    def learn(self, runs: list[Any]) -> None:
        """A fresh worker's first runs: ask the template to import the modules their
        payloads name (read from the first ``PREFIX`` bytes of the first ``LEARN_RUNS``
        runs only), so that the workers it forks next have them already."""
        if self.state == "off":
            return
        for run in runs[:LEARN_RUNS]:
            for name in modules_of(run[1][:PREFIX]):
                if name in self.wanted or name in self.refused or not importable(name):
                    continue
                self.wanted[name] = None
                if self.state == "up" and self.template is not None:
                    self.template.offer(name)

    def forked(self, wid: int) -> bool:
        """Is ``wid`` a worker this forker handed over (and whose exit is not taken)?"""
        return wid in self._kids

    # --------------------------------------------------------- the template
    def _start(self) -> None:
        self.state = "starting"
        t = Template(self._ctx, self._worker_args, self._preload)
        self._starting = t
        self._thread = threading.Thread(target=self._start_on_thread, args=(t,),
                                        name="taskwarden-template-start", daemon=True)
        self._thread.start()

    def _start_on_thread(self, t: Template) -> None:
        started: Template | None = t
        try:
            t.start()
        except TemplateUnavailable as exc:
            started = None
            if t.threads > 1 and t.preload and self.state == "starting":
                # The initializer's modules start threads at import: fork from a
                # template without them (each worker imports them itself).
                log.info("%s; the template imports none of the "
                         "initializer's modules", exc)
                retry = Template(self._ctx, self._worker_args, ())
                self._starting = retry
                try:
                    retry.start()
                    started = retry
                except TemplateUnavailable as exc2:
                    exc = exc2
            if started is None and self.state == "starting":  # (not closed meanwhile)
                log.warning("no template process (%s); workers start the "
                            "plain way", exc)
        self._started.append(started)
        if self._reactor is not None:
            self._reactor.wake()

    def has_news(self) -> bool:
        """The template's start ended: the loop must call ``take_news`` now."""
        return bool(self._started)

    def take_news(self) -> None:
        """On the loop thread: take over a template that started (or did not)."""
        while self._started:
            t = self._started.popleft()
            self._starting = None
            if self.state != "starting":  # closed meanwhile
                if t is not None:
                    t.close()
                continue
            if t is None:
                self._give_up()
                continue
            reactor = self._reactor
            assert reactor is not None
            self.template = t
            self.state = "up"
            reactor.watch(t.fileno(), functools.partial(self._on_control, t))
            reactor.watch(t.pidfd, functools.partial(self._on_template_exit, t))
            waiting, self._waiting = self._waiting, []
            for wid in waiting:
                if self.state != "up":
                    self._waiting.append(wid)  # it died meanwhile: they wait on
                    continue
                self._ask(wid)
            # (After the forks: a module's probe is a fork too, and it can wait.)
            for name in self.wanted:
                t.offer(name)  # each probed again: this template imports them anew

    def _give_up(self) -> None:
        self.state = "off"
        waiting, self._waiting = self._waiting, []
        for wid in waiting:
            self._on_failed(wid)

    def _on_control(self, t: Template, mask: int = 0) -> None:
        if t is not self.template:
            return
        self._dispatch(t.read())
        if t.dead:
            self._lost()

    def _on_template_exit(self, t: Template, mask: int = 0) -> None:
        if t is not self.template:
            return
        self._dispatch(t.read())  # what it said before it died
        self._lost()

    def _lost(self) -> None:
        """The template died: restart it. Its workers live on (their exits will be
        unknown); forks asked of it and not answered are asked of the next one
        (if one was made, its worker sees its channel close and leaves)."""
        t = self.template
        if t is None:
            return
        self.template = None
        if not t.tainted:  # (one that left for a module it imported is no failure)
            self.deaths += 1
        reactor = self._reactor
        if reactor is not None:
            reactor.unwatch(t.fileno())
            reactor.unwatch(t.pidfd)
        code = None
        if t.process is not None:
            t.process.join(0)
            code = t.process.exitcode
        t.close()
        orphans = [wid for wid, kid in self._kids.items() if kid.template is t]
        log.log(logging.INFO if t.tainted else logging.WARNING,
                "the template process %d %s (exit code %s); %d worker(s) it forked "
                "run on, their exit statuses will be unknown", t.pid,
                "left: a module it imported started a thread" if t.tainted else "died",
                code, len(orphans))
        asked, self._asked = self._asked, {}
        for sock in asked.values():
            with contextlib.suppress(OSError):
                sock.close()
        self._waiting.extend(asked)
        if self.deaths >= self.MAX_DEATHS:
            log.warning("the template process died %d times; workers start "
                        "the plain way from now on", self.deaths)
            self._give_up()
        else:
            self.state = "idle"
            self._start()  # at once: the next replacement should not wait for it
        for wid in orphans:
            self._on_status(wid)  # a death the pool waits to report: unknown now

    def _dispatch(self, events: list[TemplateEvent]) -> None:
        t = self.template
        for ev in events:
            if isinstance(ev, Spawned):
                sock = self._asked.pop(ev.wid, None)
                if sock is None or t is None:  # pragma: no cover - never asked
                    os.close(ev.pidfd)
                    continue
                self._kids[ev.wid] = _Kid(ev.pid, t)
                self._on_spawned(ev.wid, sock, ev.pid, ev.pidfd)
            elif isinstance(ev, ForkFailed):
                sock = self._asked.pop(ev.wid, None)
                if sock is not None:
                    sock.close()
                log.warning("the template could not fork a worker (%s); "
                            "starting it the plain way", os.strerror(ev.error))
                self._on_failed(ev.wid)
            elif isinstance(ev, Preloaded):
                if not ev.ok:
                    self.wanted.pop(ev.name, None)
                    self.refused.add(ev.name)
                    log.info("module %r is not preloaded in the template (its import "
                             "failed, hung, left a process or started a thread)", ev.name)
            else:
                if ev.wid in self._kids:
                    self._statuses[ev.wid] = ev.status
                    self._on_status(ev.wid)

    # ------------------------------------------------------------------ exits
    def exit_status(self, wid: int, *, block: bool) -> tuple[bool, int | None]:
        """(known, status) of a forked worker that died. Unknown when its template
        died first. With ``block``, wait for the template's word (it comes as soon
        as the template sees the death, a moment after the pool does)."""
        if wid in self._statuses:
            return True, self._statuses[wid]
        kid = self._kids.get(wid)
        if kid is None or kid.template is not self.template or kid.template.dead:
            return True, None
        t = kid.template
        t.resume()  # its word comes once it runs
        if not block:
            return False, None

        def arrived(events: list[TemplateEvent]) -> bool:
            return any(isinstance(e, Exited) and e.wid == wid for e in events)

        self._dispatch(t.wait_for(arrived, START_TIMEOUT))
        if t.dead:
            self._lost()
        return True, self._statuses.get(wid)

    def done(self, wid: int) -> None:
        """The pool has reported this worker's exit: the template may reap it."""
        self._statuses.pop(wid, None)
        kid = self._kids.pop(wid, None)
        if kid is not None and kid.template is self.template:
            kid.template.release(wid)

    def drain(self, timeout: float = 5.0) -> None:
        """Take the template's answers to every fork asked of it (at shutdown: each
        worker is then adopted and killed like the others, not left to find its
        channel closed)."""
        t = self.template
        deadline = time.monotonic() + timeout
        while t is not None and self._asked and not t.dead:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._dispatch(t.wait_for(bool, remaining))

    def close(self) -> None:
        """Stop the template (after the pool has killed and reaped its workers)."""
        self.state = "off"
        starting = self._starting
        if starting is not None:
            starting.abort()
        if self._thread is not None:
            self._thread.join()
        while self._started:
            t = self._started.popleft()
            if t is not None:
                t.close()
        if self.template is not None:
            reactor = self._reactor
            if reactor is not None:
                reactor.unwatch(self.template.fileno())
                reactor.unwatch(self.template.pidfd)
            self.template.close()
            self.template = None
        for sock in self._asked.values():
            with contextlib.suppress(OSError):
                sock.close()
        self._asked.clear()
        self._waiting.clear()


__all__ = [
    "BASE_PRELOAD",
    "Exited",
    "ForkFailed",
    "Forker",
    "Preloaded",
    "Spawned",
    "Template",
    "TemplateEvent",
    "TemplateUnavailable",
    "importable",
    "modules_of",
    "supported",
    "template_main",
]
