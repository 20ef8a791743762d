"""One child-process lifecycle: spawn, readiness banner, exit with the parent, stdout
drained, terminate then kill.

Every launcher (the embedded gateway, the fault proxy, the Locust sidecar, the
benchmarks, the test fixtures, the ocserv lab) describes its child with a
:class:`ChildSpec` and runs it with one of two runners:

* :func:`start_child` (blocking) returns a :class:`Child`.  Written with
  ``subprocess``, ``selectors``, ``threading`` and ``time`` only, so that under
  gevent's monkey-patching (a Locust process) the same code is cooperative: the
  stdout reader thread becomes a greenlet, every wait a hub switch.  Nothing
  here imports trio at module level.
* :func:`open_child` (trio) yields a :class:`TrioChild`; a task drains stdout.

Readiness is a banner: regexes matched against whole stdout lines.  After it,
stdout is still read and dropped (a full pipe would block the child).  No banner
in time, or an exit first, raises the spec's ``error`` with the reason and the
tail of the child's stderr log.  Our own commands exit with their parent
(``--exit-with-parent PID``, :func:`watch_parent`): PR_SET_PDEATHSIG is only an
option of the blocking runner from the main thread, since trio forks from a
worker thread and the signal fires when the forking thread ends.

Stop: the stop signal, a grace period, SIGKILL (to the whole process group for a
child in a session of its own, swept while the leader is unreaped so that its
group id cannot be reused), always reaped, idempotent; shielded in trio.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, TYPE_CHECKING, Any, Literal, Self

if TYPE_CHECKING:
    import resource

    import trio

__all__ = [
    "PARENT_POLL_S",
    "START_TIMEOUT_S",
    "TAG_ENV",
    "TERM_GRACE_S",
    "BannerScanner",
    "Child",
    "ChildSpec",
    "ChildStartError",
    "Stdio",
    "TrioChild",
    "exit_on_sigterm",
    "open_child",
    "serve_until_stopped",
    "start_child",
    "stop_all",
    "tag",
    "watch_parent",
    "watch_signals",
]

PARENT_POLL_S = 1.0
TERM_GRACE_S = 5.0
START_TIMEOUT_S = 30.0
#: an optional marker put on the command lines of our children (``pgrep -f``
#: finds them; tests use it to prove that none is left behind)
TAG_ENV = "LOADGEN_LOCUST_TAG"
_TAG_OK = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_EXIT_POLL_S = 0.01
_READ_BYTES = 65536
_READ_POLL_S = 0.5
_LOG_TAIL_CHARS = 1500
_PR_SET_PDEATHSIG = 1

Stdio = int | IO[Any] | None


def tag() -> str:
    """The marker from ``LOADGEN_LOCUST_TAG`` if it is a valid one, else ``""``."""
    value = os.environ.get(TAG_ENV, "")
    return value if _TAG_OK.fullmatch(value) else ""


class ChildStartError(RuntimeError):
    """A child did not become ready; the message says why and quotes its log."""


@dataclass(frozen=True, kw_only=True)
class ChildSpec:
    """What a child is and how it is run (the same for both runners)."""

    #: for messages ("the NAME did not start") and the log file name
    name: str
    argv: Sequence[str]
    #: name -> regex; ready once each has matched a stdout line (its first group is kept);
    #: empty: ready once spawned, stdout as given below
    banner: Mapping[str, re.Pattern[str]] = field(default_factory=dict)
    start_timeout_s: float = START_TIMEOUT_S
    #: our own commands: this flag and our pid are appended (``--exit-with-parent``)
    parent_flag: str | None = None
    #: appended with :func:`tag` when the environment holds one (``--tag``)
    tag_flag: str | None = None
    stdin: Stdio = subprocess.DEVNULL
    #: ignored when there is a banner: stdout is then a pipe the runner reads
    stdout: Stdio = None
    #: "log": a file in ``log_dir``, quoted when the child does not start
    stderr: Stdio | Literal["log"] = "log"
    #: where the log goes; None: a private temporary directory, removed at stop
    log_dir: Path | None = None
    #: a session (and process group) of its own; stop then sweeps the group
    new_session: bool = False
    #: PR_SET_PDEATHSIG signal (blocking runner, armed only from the main thread)
    pdeathsig: int | None = None
    cwd: Path | None = None
    env: Mapping[str, str] | None = None
    stop_signal: int = signal.SIGTERM
    stop_grace_s: float = TERM_GRACE_S
    error: type[ChildStartError] = ChildStartError

    def command(self) -> list[str]:
        """The argv as run: with the parent flag and the tag."""
        argv = list(self.argv)
        if self.parent_flag is not None:
            argv += [self.parent_flag, str(os.getpid())]
        if self.tag_flag is not None and (marker := tag()):
            argv += [self.tag_flag, marker]
        return argv

    @property
    def log_name(self) -> str:
        return self.name.replace(" ", "") + ".log"


class BannerScanner:
    """Sans-IO: finds a banner in a child's stdout, whole lines only (a chunk may end
    inside a URL), keeping the last lines for the error message."""

    def __init__(self, patterns: Mapping[str, re.Pattern[str]], *, keep_lines: int = 20) -> None:
        self._patterns = dict(patterns)
        self._partial = b""
        self.found: dict[str, str] = {}
        self.recent: deque[str] = deque(maxlen=keep_lines)

    @property
    def complete(self) -> bool:
        return len(self.found) == len(self._patterns)

    def feed(self, data: bytes) -> bool:
        """Scan ``data``; true once every pattern has matched."""
        *lines, self._partial = (self._partial + data).split(b"\n")
        if len(self._partial) > _READ_BYTES:  # no newline in sight: scan it as it is
            lines.append(self._partial)
            self._partial = b""
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            self.recent.append(line)
            for name, pattern in self._patterns.items():
                if name not in self.found and (m := pattern.search(line)):
                    self.found[name] = m.group(1) if pattern.groups else m.group(0)
        return self.complete


# -- spawning and stopping, shared by both runners ------------------------------------


def _arm_pdeathsig(sig: int) -> Callable[[], None]:
    def arm() -> None:  # in the child, before exec
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return arm


@dataclass
class _Launch:
    """The Popen arguments of one start, and the log/temporary directory behind them."""

    argv: list[str]
    options: dict[str, Any]
    log_path: Path | None
    private_dir: Path | None

    @classmethod
    def prepare(cls, spec: ChildSpec, *, preexec_ok: bool) -> _Launch:
        private_dir = log_path = None
        stderr: Any = spec.stderr
        if spec.stderr == "log":
            log_dir = spec.log_dir
            if log_dir is None:
                prefix = f"loadgen-{spec.name.replace(' ', '-')}-"
                log_dir = private_dir = Path(tempfile.mkdtemp(prefix=prefix))
            log_path = log_dir / spec.log_name
            stderr = None  # opened by open_log, just before the spawn
        preexec = None
        if spec.pdeathsig is not None:
            if not preexec_ok:
                raise ValueError("pdeathsig needs the blocking runner: trio forks in a thread")
            # the signal follows the forking thread: only from the main one
            if threading.current_thread() is threading.main_thread():
                preexec = _arm_pdeathsig(spec.pdeathsig)
        options: dict[str, Any] = {
            "stdin": spec.stdin,
            "stdout": subprocess.PIPE if spec.banner else spec.stdout,
            "stderr": stderr,
            "start_new_session": spec.new_session,
            "cwd": spec.cwd,
            "env": None if spec.env is None else dict(spec.env),
            "close_fds": True,
            "preexec_fn": preexec,
        }
        return cls(argv=spec.command(), options=options, log_path=log_path, private_dir=private_dir)

    @contextlib.contextmanager
    def open_log(self) -> Iterator[dict[str, Any]]:
        """The options with the log opened; the child keeps its own descriptor of it."""
        if self.log_path is None:
            yield self.options
            return
        with self.log_path.open("wb") as log:
            yield {**self.options, "stderr": log}

    def start_error(
        self, spec: ChildSpec, reason: str, recent: Sequence[str] = ()
    ) -> ChildStartError:
        message = f"the {spec.name} did not start ({reason})"
        if recent:
            message += "; its last stdout lines:\n" + "\n".join(recent)
        if tail := _read_tail(self.log_path):
            message += "; its log ends with:\n" + tail
        return spec.error(message)

    def cleanup(self) -> None:
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)


def _read_tail(path: Path | None, chars: int = _LOG_TAIL_CHARS) -> str:
    if path is None:
        return ""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _exited(pid: int) -> bool:
    """True once ``pid`` has exited; it stays a zombie (WNOWAIT), so its pid and group id
    stay ours.  ECHILD: already reaped (by Popen, or by gevent's child watcher)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _stop_sequence(
    pid: int, *, sig: int, grace_s: float, group: bool, reaped: bool
) -> Iterator[float]:
    """Signal, wait up to ``grace_s`` (yields how long to sleep), SIGKILL; the caller reaps."""
    if not reaped and not _exited(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while not _exited(pid) and (left := deadline - time.monotonic()) > 0:
            yield min(_EXIT_POLL_S, left)
    if group and not reaped:
        # what the child started in its group (ocserv workers), while the leader is
        # unreaped: its group id cannot have been given to anyone else
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    if not reaped and not _exited(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# -- the blocking runner --------------------------------------------------------------

_LIVE: set[Child] = set()
_LIVE_LOCK = threading.Lock()


class _StdoutReader:
    """Reads a child's stdout in a thread (a greenlet under gevent): the banner first,
    then everything, dropped, until EOF or close."""

    def __init__(self, fd: int, scanner: BannerScanner) -> None:
        self._fd = fd
        self.scanner = scanner
        self.ready = threading.Event()  # banner complete, or EOF
        self._closing = False
        os.set_blocking(fd, False)
        self._thread = threading.Thread(target=self._run, name="child-stdout", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._fd, selectors.EVENT_READ)
            while not self._closing:
                if not sel.select(_READ_POLL_S):
                    continue
                try:
                    data = os.read(self._fd, _READ_BYTES)
                except BlockingIOError:
                    continue
                except OSError:
                    break
                if not data:
                    break
                if not self.ready.is_set() and self.scanner.feed(data):
                    self.ready.set()
        self.ready.set()

    def close(self, timeout_s: float = 2.0) -> None:
        self._closing = True
        if self._thread is not threading.current_thread():
            self._thread.join(timeout_s)


class _Started:
    """What both runners know of a started child."""

    def __init__(self, spec: ChildSpec, pid: int, launch: _Launch) -> None:
        self.spec = spec
        self.pid = pid
        self._launch = launch
        #: name -> the first group of its banner pattern
        self.banner: dict[str, str] = {}

    @property
    def log_path(self) -> Path | None:
        return self._launch.log_path

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        return _read_tail(self._launch.log_path, chars)

    def _reaped_status(self) -> int | None:
        raise NotImplementedError

    def has_exited(self) -> bool:
        """Exited (reaped or not); never reaps, so the pid stays ours."""
        return self._reaped_status() is not None or _exited(self.pid)

    def send_signal(self, sig: int) -> None:
        if not self.has_exited():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


class Child(_Started):
    """A child started by :func:`start_child`; a context manager that stops it."""

    def __init__(self, spec: ChildSpec, proc: subprocess.Popen[bytes], launch: _Launch) -> None:
        super().__init__(spec, proc.pid, launch)
        self.proc = proc
        self._reader: _StdoutReader | None = None
        self._released = False
        self._lock = threading.RLock()  # a signal handler may stop it again
        #: of the child, when this runner reaped it itself (not under gevent)
        self.rusage: resource.struct_rusage | None = None

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    @property
    def stdin(self) -> IO[bytes] | None:
        return self.proc.stdin

    @property
    def stdout(self) -> IO[bytes] | None:
        """Only when the spec asked for a pipe and no banner: then it is the caller's."""
        return None if self._reader is not None else self.proc.stdout

    def _reaped_status(self) -> int | None:
        return self.proc.returncode

    def wait_exited(self, timeout_s: float) -> bool:
        """Wait (bounded) for the exit without reaping (the zombie's figures stay
        readable in /proc and its group id ours); true if it has exited."""
        deadline = time.monotonic() + timeout_s
        while not self.has_exited():
            if time.monotonic() >= deadline:
                return False
            time.sleep(_EXIT_POLL_S)
        return True

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit and reap, as ``Popen.wait`` (raises ``TimeoutExpired``)."""
        return self.proc.wait(timeout=timeout)

    def poll(self) -> int | None:
        return self.proc.poll()

    def _await_banner(self) -> None:
        assert self.proc.stdout is not None
        scanner = BannerScanner(self.spec.banner)
        self._reader = _StdoutReader(self.proc.stdout.fileno(), scanner)
        if not self._reader.ready.wait(self.spec.start_timeout_s):
            raise self._launch.start_error(
                self.spec, f"no banner within {self.spec.start_timeout_s:g} s", scanner.recent
            )
        if not scanner.complete:
            try:
                why = f"exited with status {self.wait(1.0)}"
            except subprocess.TimeoutExpired:
                why = "stdout closed"
            raise self._launch.start_error(self.spec, f"{why} before its banner", scanner.recent)
        self.banner = dict(scanner.found)

    def stop(self, grace_s: float | None = None, *, sig: int | None = None) -> int | None:
        """Signal (the spec's stop signal), wait up to ``grace_s``, SIGKILL, reap;
        idempotent (an interrupted stop can be called again).  The exit status
        (negative: killed by that signal)."""
        with self._lock:
            if self._released:
                return self.proc.returncode
            try:
                for pause in _stop_sequence(
                    self.pid,
                    sig=self.spec.stop_signal if sig is None else sig,
                    grace_s=self.spec.stop_grace_s if grace_s is None else grace_s,
                    group=self.spec.new_session,
                    reaped=self.proc.returncode is not None,
                ):
                    time.sleep(pause)
                self._reap()
            finally:
                if self.proc.returncode is not None:
                    self._release()
        return self.proc.returncode

    def _release(self) -> None:
        self._released = True
        if self._reader is not None:
            self._reader.close()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._launch.cleanup()
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def _reap(self) -> None:
        if self.proc.returncode is not None:
            return
        # gevent's Popen is reaped by its child watcher: a raw wait4 would leave it
        # waiting forever; the standard one may be reaped here, keeping the rusage
        if type(self.proc).__module__ == "subprocess":
            with contextlib.suppress(ChildProcessError):
                _, status, self.rusage = os.wait4(self.pid, 0)
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                return
        self.proc.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_child(spec: ChildSpec) -> Child:
    """Spawn and wait for the banner (blocking; cooperative under gevent).

    On any failure, the child is stopped before the error propagates.
    """
    launch = _Launch.prepare(spec, preexec_ok=True)
    try:
        with launch.open_log() as options:
            proc: subprocess.Popen[bytes] = subprocess.Popen(launch.argv, **options)
    except BaseException:
        launch.cleanup()
        raise
    child = Child(spec, proc, launch)
    with _LIVE_LOCK:
        _LIVE.add(child)
    if spec.banner:
        try:
            child._await_banner()
        except BaseException:
            child.stop(grace_s=1.0)
            raise
    return child


def stop_all(grace_s: float = 1.0, *, sig: int = signal.SIGKILL) -> None:
    """Stop every child of the blocking runner still running (a benchmark's way out)."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for child in live:
        child.stop(grace_s, sig=sig)


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    del frame
    raise SystemExit(128 + signum)


def exit_on_sigterm() -> None:
    """Blocking programs: SIGTERM raises SystemExit, which unwinds through the
    ``finally`` blocks and context managers that stop the children."""
    signal.signal(signal.SIGTERM, _raise_exit)


# -- the trio runner ------------------------------------------------------------------


class TrioChild(_Started):
    """A child started by :func:`open_child`."""

    def __init__(self, spec: ChildSpec, proc: trio.Process, launch: _Launch) -> None:
        super().__init__(spec, proc.pid, launch)
        self._proc = proc
        self._stopped = False
        self.returncode: int | None = None
        #: the pipes the spec asked for (stdout: only without a banner)
        self.stdin = proc.stdin
        self.stdout = None if spec.banner else proc.stdout

    def _reaped_status(self) -> int | None:
        return self.returncode

    async def wait(self) -> int:
        """Wait for the exit and reap."""
        self.returncode = await self._proc.wait()
        return self.returncode

    async def stop(self, grace_s: float | None = None) -> int | None:
        """As :meth:`Child.stop`, shielded from cancellation."""
        import trio

        with trio.CancelScope(shield=True):
            if self._stopped:
                return self.returncode
            for pause in _stop_sequence(
                self.pid,
                sig=self.spec.stop_signal,
                grace_s=self.spec.stop_grace_s if grace_s is None else grace_s,
                group=self.spec.new_session,
                reaped=self.returncode is not None,
            ):
                await trio.sleep(pause)
            await self.wait()
            self._stopped = True
        return self.returncode


async def _drain(
    stream: trio.abc.ReceiveStream,
    scanner: BannerScanner,
    *,
    task_status: trio.TaskStatus[None],
) -> None:
    started = False
    while data := await stream.receive_some(_READ_BYTES):
        if not started and scanner.feed(bytes(data)):
            task_status.started()
            started = True
    if not started:
        raise EOFError


@asynccontextmanager
async def open_child(spec: ChildSpec) -> AsyncIterator[TrioChild]:
    """Spawn and wait for the banner (trio); stdout is drained by a task until the
    child is stopped, on leaving the context whatever happens.

    Failures of the body reach the caller as they are, never in an ExceptionGroup.
    """
    import trio

    launch = _Launch.prepare(spec, preexec_ok=False)
    try:
        with launch.open_log() as options:
            proc = await trio.lowlevel.open_process(launch.argv, **options)
    except BaseException:
        launch.cleanup()
        raise
    child = TrioChild(spec, proc, launch)
    failure: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            try:
                if spec.banner:
                    assert proc.stdout is not None
                    scanner = BannerScanner(spec.banner)
                    try:
                        with trio.fail_after(spec.start_timeout_s):
                            await nursery.start(_drain, proc.stdout, scanner)
                    except trio.TooSlowError:
                        reason = f"no banner within {spec.start_timeout_s:g} s"
                        raise launch.start_error(spec, reason, scanner.recent) from None
                    except EOFError:
                        await child.stop(grace_s=1.0)
                        reason = f"exited with status {child.returncode} before its banner"
                        raise launch.start_error(spec, reason, scanner.recent) from None
                    child.banner = dict(scanner.found)
                yield child
            except BaseException as exc:  # kept out of the nursery: the caller sees it bare
                failure = exc
            finally:
                await child.stop()
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    await stream.aclose()
        launch.cleanup()
    if failure is not None:
        raise failure


# -- inside our own children (trio) ---------------------------------------------------


async def watch_signals(
    stop: trio.Event, *, task_status: trio.TaskStatus[None] | None = None
) -> None:
    """Set ``stop`` at the first SIGTERM or SIGINT.  Start it with ``nursery.start``
    before printing the banner: until the receiver is open, SIGTERM kills outright."""
    import trio

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        if task_status is not None:
            task_status.started()
        async for _ in signals:
            stop.set()
            return


async def serve_until_stopped(
    nursery: trio.Nursery, banner: Sequence[str], *, parent_pid: int | None
) -> None:
    """Our own server command, serving: print its ``banner`` lines (what the parent
    waits for), then wait for SIGTERM, SIGINT or, with ``parent_pid``, the parent's end."""
    import trio

    stop = trio.Event()
    if parent_pid is not None:
        nursery.start_soon(watch_parent, parent_pid, stop)
    # before the banner: a parent may send SIGTERM as soon as it has read it
    await nursery.start(watch_signals, stop)
    for line in banner:
        print(line, flush=True)
    await stop.wait()


async def watch_parent(parent_pid: int, stop: trio.Event) -> None:
    """Set ``stop`` once this process's parent is no longer ``parent_pid``."""
    import trio

    while os.getppid() == parent_pid:
        await trio.sleep(PARENT_POLL_S)
    stop.set()
