"""loadgen.lifecycle with tiny real children (``python -c``), both runners: the banner,
a banner that never comes, a child that dies first, stdout drained after the banner,
terminate then kill, the process group swept, exit with the parent, given pipes,
and the gevent side never importing trio."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import trio

from loadgen import lifecycle
from loadgen.lifecycle import BannerScanner, ChildSpec, ChildStartError, open_child, start_child

ROOT = Path(__file__).resolve().parent.parent
BANNER = {"url": re.compile(r"listening: (http://\S+)"), "ca": re.compile(r"CA: (\S+)")}


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def _spec(code: str, **kw: object) -> ChildSpec:
    options: dict[str, object] = {"name": "test child", "banner": BANNER, "start_timeout_s": 10.0}
    options.update(kw)
    return ChildSpec(argv=_python(code), **options)  # type: ignore[arg-type]


READY = """
    import sys, time
    print("starting", flush=True)
    print("listening: http://127.0.0.1:8080/", flush=True)
    print("CA: /tmp/ca.pem", flush=True)
    time.sleep(60)
"""


#: ignores SIGTERM
STUBBORN = """
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("listening: http://h/", flush=True)
    print("CA: c", flush=True)
    time.sleep(60)
"""
DIES = """
    import sys
    print("cannot listen on 127.0.0.1:1: taken", file=sys.stderr)
    sys.exit(3)
"""


def _chatty(done: Path) -> str:
    """Prints 16 MiB after its banner, far beyond a pipe's 64 KiB (without the drain
    it blocks in write), then creates ``done``."""
    return f"""
        import sys, time
        print("listening: http://h/", flush=True)
        print("CA: c", flush=True)
        chunk = b"x" * 65536 + b"\\n"
        for _ in range(256):
            sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
        open({str(done)!r}, "w").close()
        time.sleep(60)
    """


def _gone(pid: int) -> bool:
    """No such process, or a zombie (reaped by nobody we know)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.02)
    return False


# -- the banner scanner (sans-IO) -------------------------------------------------------


def test_scanner_needs_whole_lines() -> None:
    scanner = BannerScanner(BANNER)
    # a chunk that ends inside the URL must not yield a truncated one
    assert not scanner.feed(b"noise\r\nlistening: http://127.0.0.1:80")
    assert "url" not in scanner.found
    assert not scanner.feed(b"80/\r\n")
    assert scanner.found == {"url": "http://127.0.0.1:8080/"}
    assert scanner.feed(b"CA: /x/ca.pem\nlater\n")
    assert scanner.found["ca"] == "/x/ca.pem"
    assert list(scanner.recent)[:2] == ["noise", "listening: http://127.0.0.1:8080/"]


def test_scanner_keeps_the_first_match_and_bounded_memory() -> None:
    scanner = BannerScanner({"word": re.compile(r"ready")}, keep_lines=3)
    scanner.feed(b"x" * 200_000)  # no newline in sight: scanned, not kept
    assert not scanner.complete
    assert scanner.feed(b"\n1\n2\nready\n")
    assert scanner.found == {"word": "ready"}
    assert len(scanner.recent) == 3


def test_command_carries_the_parent_pid_and_a_valid_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = ChildSpec(
        name="x", argv=["prog", "-v"], parent_flag="--exit-with-parent", tag_flag="--tag"
    )
    monkeypatch.setenv(lifecycle.TAG_ENV, "run-1.a_b")
    assert spec.command() == [
        "prog",
        "-v",
        "--exit-with-parent",
        str(os.getpid()),
        "--tag",
        "run-1.a_b",
    ]
    monkeypatch.setenv(lifecycle.TAG_ENV, "bad tag; rm -rf")
    assert spec.command() == ["prog", "-v", "--exit-with-parent", str(os.getpid())]
    assert spec.log_name == "x.log"


# -- the blocking runner ----------------------------------------------------------------


def test_blocking_banner_found_and_stop_reaps() -> None:
    with start_child(_spec(READY)) as child:
        assert child.banner == {"url": "http://127.0.0.1:8080/", "ca": "/tmp/ca.pem"}
        assert child.stdout is None  # the runner's: drained
        log_dir = child.log_path.parent if child.log_path else None
        assert log_dir is not None and log_dir.is_dir()
        pid = child.pid
    assert child.returncode == -signal.SIGTERM
    assert _gone(pid)
    assert not log_dir.exists()  # the private directory is removed
    assert child.stop() == -signal.SIGTERM  # idempotent


def test_blocking_banner_never_comes_quotes_the_log() -> None:
    code = """
        import sys, time
        print("some stdout", flush=True)
        print("warming up slowly", file=sys.stderr, flush=True)
        time.sleep(60)
    """
    started = time.monotonic()
    with pytest.raises(ChildStartError) as info:
        start_child(_spec(code, start_timeout_s=1.0))
    assert time.monotonic() - started < 8
    text = str(info.value)
    assert "the test child did not start (no banner within 1 s)" in text
    assert "warming up slowly" in text
    assert "some stdout" in text


def test_blocking_child_dies_before_its_banner(tmp_path: Path) -> None:
    code = DIES

    class OwnError(ChildStartError):
        pass

    with pytest.raises(OwnError, match="exited with status 3 before its banner") as info:
        start_child(_spec(code, log_dir=tmp_path, error=OwnError))
    assert "cannot listen" in str(info.value)
    assert (tmp_path / "testchild.log").exists()  # a given log directory stays


def test_blocking_stdout_is_drained_after_the_banner(tmp_path: Path) -> None:
    done = tmp_path / "done"
    code = _chatty(done)
    with start_child(_spec(code)):
        deadline = time.monotonic() + 20
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert done.exists()


def test_blocking_terminate_then_kill() -> None:
    code = STUBBORN
    child = start_child(_spec(code))
    started = time.monotonic()
    assert child.stop(grace_s=0.3) == -signal.SIGKILL
    assert 0.25 < time.monotonic() - started < 5


def test_blocking_new_session_sweeps_the_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild"
    code = f"""
        import subprocess, sys, time
        p = subprocess.Popen(["sleep", "60"])
        open({str(pid_file)!r}, "w").write(str(p.pid))
        print("listening: http://h/", flush=True)
        print("CA: c", flush=True)
        time.sleep(60)
    """
    child = start_child(_spec(code, new_session=True))
    assert os.getpgid(child.pid) == child.pid
    grandchild = int(pid_file.read_text())
    child.stop()
    assert _wait_gone(grandchild, 5)


def test_blocking_given_pipes_no_banner() -> None:
    """The sidecar's way: frames over the child's stdin and stdout, readiness elsewhere."""
    child_in, to_child = os.pipe()
    from_child, child_out = os.pipe()
    code = """
        import sys
        line = sys.stdin.readline()
        sys.stdout.write(line.upper())
        sys.stdout.flush()
        sys.stdin.read()  # until EOF
    """
    try:
        child = start_child(
            ChildSpec(
                name="piped", argv=_python(code), stdin=child_in, stdout=child_out, stderr=None
            )
        )
    finally:
        os.close(child_in)
        os.close(child_out)
    try:
        os.write(to_child, b"hello\n")
        assert os.read(from_child, 100) == b"HELLO\n"
        os.close(to_child)
        assert child.wait(timeout=10) == 0
    finally:
        child.stop()
        os.close(from_child)


def test_stop_all_stops_what_is_left() -> None:
    children = [start_child(_spec(READY)) for _ in range(2)]
    lifecycle.stop_all()
    assert all(c.returncode == -signal.SIGKILL for c in children)


def test_exit_with_the_parent(tmp_path: Path) -> None:
    """A child given --exit-with-parent exits by itself when its parent is killed."""
    child_code = """
        import sys, trio
        from loadgen.lifecycle import watch_parent
        async def main():
            stop = trio.Event()
            print("listening: http://h/", flush=True)
            print("CA: c", flush=True)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_parent, int(sys.argv[2]), stop)
                await stop.wait()
                nursery.cancel_scope.cancel()
        trio.run(main)
    """
    parent_code = f"""
        import re, sys, time
        from loadgen.lifecycle import ChildSpec, start_child
        spec = ChildSpec(
            name="child", argv=[sys.executable, "-c", {textwrap.dedent(child_code)!r}],
            parent_flag="--exit-with-parent", banner={{"url": re.compile(r"listening: (\\S+)")}},
        )
        child = start_child(spec)
        print(child.pid, flush=True)
        time.sleep(60)
    """
    parent = subprocess.Popen(
        _python(parent_code), cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert parent.stdout is not None
        grandchild = int(parent.stdout.readline())
        assert not _gone(grandchild)
        parent.kill()
        parent.wait()
        assert _wait_gone(grandchild, 3 * lifecycle.PARENT_POLL_S + 5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()


def test_the_blocking_side_never_imports_trio() -> None:
    """A Locust process is gevent-patched: trio must stay out of it."""
    code = f"""
        import re, sys
        import loadgen.locust.user, loadgen.locust.chaos, loadgen.locust.client
        import loadgen.faultproxy.embedded, loadgen.gateway.embedded
        from loadgen.lifecycle import ChildSpec, start_child
        spec = ChildSpec(name="c", argv=[sys.executable, "-c", {textwrap.dedent(READY)!r}],
                         banner={{"url": re.compile(r"listening: (\\S+)")}})
        with start_child(spec) as child:
            assert child.banner["url"] == "http://127.0.0.1:8080/"
        assert "trio" not in sys.modules, "trio imported"
    """
    proc = subprocess.run(
        _python(code), cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_the_blocking_runner_is_cooperative_under_gevent() -> None:
    """Under gevent's monkey-patching, waiting for a banner lets other greenlets run."""
    code = """
        from gevent import monkey
        monkey.patch_all()
        import re, sys, time
        import gevent
        from loadgen.lifecycle import ChildSpec, start_child
        ticks = []
        def tick():
            while True:
                ticks.append(time.monotonic())
                gevent.sleep(0.05)
        gevent.spawn(tick)
        slow = "import time; time.sleep(0.5); print('listening: x', flush=True); time.sleep(60)"
        spec = ChildSpec(name="c", argv=[sys.executable, "-c", slow],
                         banner={"url": re.compile(r"listening: (\\S+)")})
        with start_child(spec) as child:
            assert child.banner == {"url": "x"}
            during = len(ticks)
        assert during >= 5, during
        assert child.returncode == -15
        print("ok")
    """
    proc = subprocess.run(
        _python(code), cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


# -- the trio runner ----------------------------------------------------------------------


async def test_trio_banner_found_and_stopped_on_exit() -> None:
    async with open_child(_spec(READY)) as child:
        assert child.banner == {"url": "http://127.0.0.1:8080/", "ca": "/tmp/ca.pem"}
        pid = child.pid
    assert child.returncode == -signal.SIGTERM
    assert _gone(pid)


async def test_trio_banner_never_comes() -> None:
    code = """
        import sys, time
        print("slow start", file=sys.stderr, flush=True)
        time.sleep(60)
    """
    with pytest.raises(ChildStartError, match="no banner within 1 s") as info:
        async with open_child(_spec(code, start_timeout_s=1.0)):
            pytest.fail("no banner was printed")
    assert "slow start" in str(info.value)


async def test_trio_child_dies_before_its_banner() -> None:
    code = DIES
    with pytest.raises(ChildStartError, match="exited with status 3 before its banner") as info:
        async with open_child(_spec(code)):
            pytest.fail("the child died")
    assert "cannot listen" in str(info.value)


async def test_trio_stdout_is_drained_after_the_banner(tmp_path: Path) -> None:
    done = tmp_path / "done"
    code = _chatty(done)
    async with open_child(_spec(code)):
        with trio.fail_after(20):
            while not done.exists():
                await trio.sleep(0.05)


async def test_trio_terminate_then_kill_shielded_from_cancellation() -> None:
    code = STUBBORN
    with trio.CancelScope() as scope:
        async with open_child(_spec(code, stop_grace_s=0.3)) as child:
            scope.cancel()  # the stop below runs in a cancelled scope
            await trio.sleep_forever()
    assert child.returncode == -signal.SIGKILL
    assert _gone(child.pid)


async def test_trio_failures_of_the_body_are_not_wrapped() -> None:
    with pytest.raises(KeyError):
        async with open_child(_spec(READY)) as child:
            raise KeyError("mine")
    assert child.returncode == -signal.SIGTERM


async def test_trio_refuses_pdeathsig() -> None:
    with pytest.raises(ValueError, match="blocking runner"):
        async with open_child(_spec(READY, pdeathsig=signal.SIGKILL)):
            pass


async def test_trio_given_pipes_no_banner() -> None:
    """``loadgen run --processes``'s way: a password on stdin, status lines on stdout."""
    code = """
        import sys
        print(sys.stdin.readline().strip().upper(), flush=True)
    """
    spec = ChildSpec(
        name="piped",
        argv=_python(code),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=None,
        new_session=True,
    )
    async with open_child(spec) as child:
        assert child.stdin is not None and child.stdout is not None
        await child.stdin.send_all(b"secret\n")
        await child.stdin.aclose()
        with trio.fail_after(10):
            out = b""
            while chunk := await child.stdout.receive_some(100):
                out += chunk
            assert out == b"SECRET\n"
            assert await child.wait() == 0
    assert child.returncode == 0
