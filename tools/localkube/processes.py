"""Child processes for the test tooling: spawn with a log file, stop with a deadline, clean up.

The Kafka broker, ``redis-server`` and the local cluster's components are all long-running
children that share the same needs: their output goes to a file (a failing test quotes it rather
than interleaving it with pytest's), they must not outlive a crashed or SIGKILLed pytest, and
they are stopped politely (SIGTERM) first and forcibly (SIGKILL) after a timeout.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import os
import shutil
import subprocess
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

_PR_SET_PDEATHSIG = 1


def _set_pdeathsig(sig: int) -> None:
    """Child-side: have the kernel send ``sig`` when the parent dies uncleanly.

    Without this a crashed or SIGKILLed pytest leaves children holding ports, sockets and
    memory (a JVM alone takes 512 MiB).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


def spawn_logged(
    argv: Sequence[str],
    log_path: Path,
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    pdeathsig: int | None = None,
    pass_fds: Sequence[int] = (),
    echo_command: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdout and stderr appended to ``log_path`` and no stdin.

    The child gets its own session: Ctrl-C reaches pytest only, whose teardown then stops the
    child cleanly, and the child's process group can be signalled as a whole. ``pdeathsig``
    (e.g. ``signal.SIGKILL``) is what the kernel sends the child if this process dies; leave it
    ``None`` for children that must outlive us. PDEATHSIG follows the *thread* that forked, so
    only arm it from a thread that lives as long as the child should. ``echo_command`` writes
    ``$ argv`` to the log first, so the log shows what was run.
    """
    with log_path.open("ab") as log_file:
        if echo_command:
            log_file.write(f"$ {' '.join(argv)}\n".encode())
            log_file.flush()
        # The child has its own copy of the descriptor; ours is closed on leaving the block.
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
            preexec_fn=None if pdeathsig is None else functools.partial(_set_pdeathsig, pdeathsig),
        )


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """SIGTERM ``proc`` and wait up to ``timeout`` s, then SIGKILL; True if it exited in time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_process(proc)
            return False
    return True


def kill_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``proc`` (if it still runs) and reap it."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


_LIVE: weakref.WeakSet[ChildService] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for service in list(_LIVE):
        service.kill()


class ChildService:
    """A test service run as one child process, with its files in ``workdir``.

    Subclasses set ``workdir`` and ``_owns_workdir`` and implement :meth:`start`, most often
    with :meth:`_launch`; those that stop differently override :meth:`stop` and :meth:`kill`.
    The started process goes to :meth:`_track`, and :meth:`_reap` is called once it is gone. A
    tracked process that is still running when the interpreter exits is killed (``atexit``),
    so a test that forgot :meth:`close` leaks nothing.
    """

    workdir: Path
    _owns_workdir: bool
    _proc: subprocess.Popen[bytes] | None = None
    #: How long :meth:`stop` waits after SIGTERM before it kills.
    stop_timeout: float = 10.0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after :attr:`stop_timeout`."""
        if self._proc is None:
            return
        stop_process(self._proc, self.stop_timeout)
        self._reap()

    def kill(self) -> None:
        """SIGKILL, as an OOM kill, a crashed container or a lost node would."""
        if self._proc is None:
            return
        kill_process(self._proc)
        self._reap()

    def restart(self) -> None:
        self.stop()
        self.start()

    def _failure(self, what: str) -> Exception:
        """The error to raise when the service does not come up: ``what`` and its logs."""
        raise NotImplementedError

    def _launch(
        self,
        argv: Sequence[str],
        log_path: Path,
        *,
        ready: Callable[[], bool],
        timeout: float,
        not_ready: str,
        interval: float,
    ) -> None:
        """Spawn ``argv`` (output to ``log_path``) and wait until ``ready()``. If it exits
        first, or is not ready within ``timeout`` (then it is killed), raise
        :meth:`_failure`: "<program> exited with code N", or "``not_ready`` in T s"."""
        proc = spawn_logged(argv, log_path, cwd=self.workdir)
        self._track(proc)
        program = Path(argv[0]).name
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                code = proc.returncode
                self._reap()
                raise self._failure(f"{program} exited with code {code}")
            if ready():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise self._failure(f"{not_ready} in {timeout} s")
            time.sleep(interval)

    def _track(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc
        _LIVE.add(self)

    def _reap(self) -> None:
        self._proc = None
        _LIVE.discard(self)

    def close(self) -> None:
        """Stop and delete ``workdir`` (unless the caller owns it).

        ``SIDECAR_STATE_KEEP_TEST_DIRS=1`` keeps it for a post-mortem.
        """
        self.stop()
        if self._owns_workdir and not os.environ.get("SIDECAR_STATE_KEEP_TEST_DIRS"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class StartStopContext:
    """``with`` support for an object whose :meth:`start` returns it and undoes a partial start.

    ``with obj as started:`` runs ``obj.start()`` and, on leaving, ``obj.stop()``.
    """

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
