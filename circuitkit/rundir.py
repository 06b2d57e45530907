"""Run directories: one run at a time, a complete run never changed, and every end recorded.

- **Lock.** A run holds ``.circuitkit.lock`` in its directory for as long as it runs: the file records the
  holder (host, pid, start time, command) and is locked with ``flock`` where the file system supports it,
  so a lock left by a process that died is free again (on the same host a dead holder's pid is also
  detected where ``flock`` is unavailable). A second run on the same directory refuses, naming the holder.
- **A complete run is kept.** A directory whose ``results.json`` says ``"status": "complete"`` is never
  changed by a later run unless the user passes ``overwrite=true``; then the new run writes into a staging
  directory inside it and its files replace the old ones only once it completes (a failed or interrupted
  replacement leaves the old run as it was). An earlier run that did not complete (failed, interrupted, or
  killed while ``running``) is replaced by the new run: its result files are removed first, so the
  directory never mixes two runs.
- **Every end is recorded.** ``results.json`` is written with ``"status": "running"`` as soon as the lock
  is held, and then ``complete``, ``failed`` (with the error) or ``interrupted`` (Ctrl-C, or the SIGTERM
  that schedulers send).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import secrets
import shutil
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from circuitkit.errors import CircuitkitError

LOCK_NAME = ".circuitkit.lock"
STAGING_PREFIX = ".staging-"
#: Files and folders a run writes into its directory (besides its reporters' pictures).
RESULT_NAMES = ("results.json", "scores.json", "circuit.json", ".hydra")
#: File name patterns reporters write (pictures).
RESULT_PATTERNS = ("*.png", "*.svg", "*.html")


class RunDirError(CircuitkitError):
    """The run directory cannot be used (held by another run, holds a complete run, not creatable)."""


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM (or SIGHUP) while a run was in progress."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def unique_suffix() -> str:
    """A short random suffix that makes run directories of jobs started in the same second distinct."""
    return secrets.token_hex(3)


def register_resolvers() -> None:
    """Register ``${circuitkit.uid:}``, used by the default run and sweep directory patterns."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("circuitkit.uid"):
        # Cached: the same value wherever the pattern is resolved again in this config (sweep jobs).
        OmegaConf.register_new_resolver("circuitkit.uid", unique_suffix, use_cache=True)


register_resolvers_error: Exception | None = None
try:  # at import, so that every process resolving a run directory pattern (sweep workers too) has it
    register_resolvers()
except Exception as _e:  # noqa: BLE001 # pragma: no cover - omegaconf missing: the CLI reports it
    register_resolvers_error = _e


def check_creatable(path: str | os.PathLike, option: str = "hydra.run.dir") -> None:
    """Raise :class:`RunDirError` unless ``path`` is a directory or can be created as one."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunDirError(
            f"{option}={p} is a file, not a directory. Choose a writable output directory ({option}=...)."
        ) from None
    except NotADirectoryError:
        parent = next((a for a in p.parents if a.exists() and not a.is_dir()), p.parent)
        raise RunDirError(
            f"{option}={p} cannot be created: {parent} is a file, not a directory. Choose a writable output directory ({option}=...)."
        ) from None
    except OSError as e:
        raise RunDirError(
            f"{option}={p} cannot be created: {e.strerror or e}. Choose a writable output directory ({option}=...)."
        ) from None
    if not p.is_dir():
        raise RunDirError(f"{option}={p} is not a directory. Choose a writable output directory ({option}=...).")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True
    return True


def _describe_holder(info: dict[str, Any]) -> str:
    parts = [f"pid {info.get('pid', '?')} on {info.get('host', '?')}"]
    if info.get("started"):
        parts.append(f"started {info['started']}")
    text = ", ".join(parts)
    if info.get("command"):
        text += f" ({_short(str(info['command']), 120)})"
    return text


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RunLock:
    """An exclusive lock on a run directory (``.circuitkit.lock``), held until :meth:`release`."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.fd: int | None = None

    def _info(self) -> dict[str, Any]:
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
        }

    def _read(self) -> dict[str, Any]:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
            return info if isinstance(info, dict) else {}
        except (OSError, ValueError):
            return {}

    def _refuse(self, info: dict[str, Any]) -> RunDirError:
        return RunDirError(
            f"{self.run_dir} is in use by another run ({_describe_holder(info)}). Wait for it to finish, or choose "
            f"another directory (hydra.run.dir=...). If that process is gone, delete {self.path}."
        )

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            fcntl = None  # type: ignore[assignment]
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise RunDirError(
                    f"Cannot create {self.path}: {e.strerror or e}. Choose a writable directory (hydra.run.dir=...)."
                ) from None
            locked_by_flock = False
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    locked_by_flock = True
                except BlockingIOError:
                    os.close(fd)
                    raise self._refuse(self._read()) from None
                except OSError as e:
                    if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                        os.close(fd)
                        raise
            # The path may have been released (unlinked) and re-created between our open and our lock.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            if not locked_by_flock:
                # No flock here (some network file systems): the recorded holder decides, a dead pid on
                # this host frees the lock.
                info = self._read()
                if info and not (info.get("host") == socket.gethostname() and not _pid_alive(int(info.get("pid", -1)))):
                    if info.get("pid") != os.getpid():
                        os.close(fd)
                        raise self._refuse(info)
            os.ftruncate(fd, 0)
            os.write(fd, (json.dumps(self._info()) + "\n").encode())
            self.fd = fd
            return
        raise RunDirError(f"Could not lock {self.path}: it keeps being replaced. Is another run starting there?")

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None


def read_status(run_dir: Path) -> str | None:
    """``status`` of the ``results.json`` in ``run_dir``; None when there is none, ``"unreadable"`` when it
    cannot be read as a results object."""
    path = run_dir / "results.json"
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "unreadable"
    return str(obj.get("status")) if isinstance(obj, dict) else "unreadable"


def _result_entries(run_dir: Path) -> list[Path]:
    found = [run_dir / n for n in RESULT_NAMES if (run_dir / n).exists() or (run_dir / n).is_symlink()]
    for pattern in RESULT_PATTERNS:
        found += [p for p in sorted(run_dir.glob(pattern)) if p not in found]
    return found


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class RunDir:
    """Where one run writes: its final directory, or a staging directory that replaces it on completion.

    Use :func:`open_run_dir`; then write into :attr:`out`, call :meth:`commit` once the run completed and
    :meth:`close` in every case.
    """

    def __init__(self, final: Path, lock: RunLock, staging: Path | None, replaced: str | None) -> None:
        self.final = final
        self.lock = lock
        self.staging = staging
        #: status of the earlier run the new one replaces (None: the directory held none).
        self.replaced = replaced
        self.committed = False

    @property
    def out(self) -> Path:
        return self.staging if self.staging is not None else self.final

    def commit(self) -> None:
        """Make the staged files the directory's run (no-op without staging)."""
        if self.staging is None or self.committed:
            self.committed = True
            return
        old = self.final / f".replaced-{unique_suffix()}"
        old.mkdir()
        # results.json goes first out and last in: whenever results.json is present, the files beside it
        # are the same run's.
        for p in _result_entries(self.final):
            os.replace(p, old / p.name)
        staged = sorted(self.staging.iterdir(), key=lambda p: p.name == "results.json")
        for p in staged:
            os.replace(p, self.final / p.name)
        shutil.rmtree(old, ignore_errors=True)
        self.staging.rmdir()
        self.staging = None
        self.committed = True

    def close(self) -> None:
        """Release the lock; an uncommitted staging directory is discarded (the old run stays)."""
        try:
            if self.staging is not None and not self.committed:
                shutil.rmtree(self.staging, ignore_errors=True)
        finally:
            self.lock.release()


def open_run_dir(run_dir: str | os.PathLike, overwrite: bool = False, option: str = "hydra.run.dir") -> RunDir:
    """Lock ``run_dir`` for one run and decide where the run writes (see the module docstring).

    Raises:
        RunDirError: the directory cannot be created, another run holds it, or it holds a complete run and
            ``overwrite`` is false.
    """
    final = Path(run_dir)
    check_creatable(final, option)
    lock = RunLock(final)
    lock.acquire()
    try:
        for p in final.glob(f"{STAGING_PREFIX}*"):  # left by a replacement that was killed
            _remove(p)
        for p in final.glob(".replaced-*"):
            _remove(p)
        status = read_status(final)
        if status == "complete":
            if not overwrite:
                raise RunDirError(
                    f"{final} already holds a complete run (results.json); a new run never changes it. Choose "
                    "another directory (hydra.run.dir=...), or add overwrite=true to replace it once the new run "
                    "completes."
                )
            staging = final / f"{STAGING_PREFIX}{unique_suffix()}"
            staging.mkdir()
            return RunDir(final, lock, staging, status)
        if status is not None:  # an earlier run that did not complete: replaced, never mixed
            for p in _result_entries(final):
                _remove(p)
        return RunDir(final, lock, None, status)
    except BaseException:
        lock.release()
        raise


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Terminated` (a ``KeyboardInterrupt``), so the run
    records ``interrupted`` before the process exits. Outside the main thread this does nothing."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(signum)

    sigs = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {}
    for s in sigs:
        try:
            if signal.getsignal(s) is signal.SIG_IGN:  # e.g. nohup: keep ignoring
                continue
            previous[s] = signal.signal(s, handler)
        except (ValueError, OSError):  # pragma: no cover
            pass
    try:
        yield
    finally:
        for s, h in previous.items():
            with contextlib.suppress(ValueError, OSError):
                signal.signal(s, h)


def umask() -> int:
    """The process's file-creation mask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
