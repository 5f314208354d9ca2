"""``envkit run``: up → run a command with the outputs in its environment → destroy or preserve.

The one-liner a CI job needs in place of provision / test / "cleanup (success)" / "cleanup
(failure — preserve for debug)" stages. The command's exit code decides the policy (0: success)
and is returned unchanged, so CI sees the test result; a command killed by signal N gives
``128 + N`` as a shell would.

Signals: SIGINT, SIGTERM and SIGHUP sent to envkit while the command runs are forwarded to the
command's process group; envkit then waits (``grace`` seconds, then SIGKILL) and applies the
failure policy. During ``up`` they abort provisioning, which cleans up after itself. A SIGKILL
of envkit itself is handled by state + TTL + ``envkit reap``, like every other crash: the
command's own process gets SIGTERM (``PR_SET_PDEATHSIG``), and what it started is stopped by the
next ``down`` or ``reap`` through the run's marker (envkit.commands).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from types import FrameType

from envkit import commands, lifecycle
from envkit.errors import ConfigError, EnvkitError
from envkit.outputs import visible
from envkit.plan import Plan
from envkit.state import Record, Status

log = logging.getLogger(__name__)

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
DEFAULT_GRACE = 10.0


class OnSuccess(StrEnum):
    """What ``run`` does with the environment when the command exits 0."""

    destroy = "destroy"
    keep = "keep"


class OnFailure(StrEnum):
    """What ``run`` does with the environment when the command fails or is interrupted."""

    preserve = "preserve"
    destroy = "destroy"


@dataclass(frozen=True)
class RunResult:
    """How a run ended: the command's exit code and what became of the environment."""

    exit_code: int
    outcome: str  # "destroyed", "kept" or "preserved"
    pipeline_id: str
    record: Record | None  # the kept or preserved environment; None once destroyed
    interrupted: bool = False


class _Interrupted(KeyboardInterrupt):
    """A forwarded signal arrived while ``up`` was running (a KeyboardInterrupt, so ``up``
    cleans up what it created and re-raises it as it does for Ctrl-C)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Signals:
    """Installs handlers for the forwarded signals and remembers the first one received."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.child_group: int | None = None
        self.raise_now = True  # during up: abort it; while the command runs: forward

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
        if self.child_group is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.child_group, signum)
        elif self.raise_now:
            self.raise_now = False  # raise once; cleanup after that must not be interrupted
            raise _Interrupted(signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Signals]:
        previous = {sig: signal.signal(sig, self.handle) for sig in FORWARDED}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def run(
    ctx: Plan,
    command: Sequence[str],
    *,
    ttl: timedelta | None = None,
    preserve_ttl: timedelta | None = None,
    on_success: OnSuccess = OnSuccess.destroy,
    on_failure: OnFailure = OnFailure.preserve,
    progress: lifecycle.Progress = lifecycle._quiet,
    grace: float = DEFAULT_GRACE,
    env: Mapping[str, str] | None = None,
    on_ready: Callable[[Record], None] | None = None,
) -> RunResult:
    """Bring the environment up, run ``command`` in it and destroy or preserve it by policy.

    ``ttl`` is the environment's lifetime while the command runs and, unless ``preserve_ttl``
    is given, once preserved too. ``on_ready`` is called once the environment is up, before
    the command starts. Raises ``EnvkitError`` when ``up`` fails (nothing is left).
    """
    if not command:
        raise ConfigError(
            "No command to run.", hint="Put it after '--': envkit run [ID] -- pytest -x"
        )
    check_command(command[0], env if env is not None else os.environ)
    signals = _Signals()
    with signals.installed():
        try:
            record = lifecycle.up(ctx, ttl=ttl, progress=progress)
        except _Interrupted as exc:
            # Provisioning cleans up after itself; but the signal may also have landed after
            # the environment became ready: then it is a failed run like any other.
            signals.raise_now = False
            ready = lifecycle.status(ctx)
            if ready is None or ready.status is not Status.READY:
                return RunResult(128 + exc.signum, "destroyed", ctx.pipeline_id, None, True)
            return _finish(
                ctx, 128 + exc.signum, True, ready, on_success, on_failure, preserve_ttl or ttl
            )
        signals.raise_now = False
        if on_ready is not None:
            on_ready(record)
        environ = {**(env if env is not None else os.environ), **record.outputs}
        marker = _track(ctx)
        if marker is not None:
            environ[commands.MARKER_VARIABLE] = marker
        code = _execute(command, environ, signals, grace)
        if marker is not None:
            _best_effort(ctx, lambda: lifecycle.forget_run(ctx, marker))
        interrupted = signals.received is not None
        return _finish(ctx, code, interrupted, record, on_success, on_failure, preserve_ttl or ttl)


class CommandNotFoundError(ConfigError):
    """The command to run does not exist (a typo): nothing is created, and the exit code is a
    shell's, 127."""

    exit_code = 127


def check_command(name: str, environ: Mapping[str, str]) -> None:
    """Refuse a command that cannot run before anything is brought up (a typo would otherwise
    leave an environment preserved for a day)."""
    if os.sep in name:
        found = name if os.path.isfile(name) and os.access(name, os.X_OK) else None
    else:
        found = shutil.which(name, path=environ.get("PATH", os.defpath))
    if found is None:
        raise CommandNotFoundError(
            f"The command {name!r} was not found (or is not executable); nothing was created.",
            hint="Check its name and PATH; envkit runs it as given after '--'.",
        )


def _track(ctx: Plan) -> str | None:
    """Record this run in the pipeline's record, so that a ``down`` or ``reap`` after envkit was
    killed stops what the command left running (envkit.commands); the command's marker, or None
    when nothing could be recorded."""
    new = commands.new_run()
    if new is None:
        return None
    marker, owner = new
    return marker if _best_effort(ctx, lambda: lifecycle.note_run(ctx, marker, owner)) else None


def _best_effort(ctx: Plan, update: Callable[[], None]) -> bool:
    """Run a record update for the run's bookkeeping; a failure costs that cleanup, never the
    run (its command, its exit code, the policy)."""
    try:
        update()
    except (EnvkitError, OSError) as exc:
        log.warning("could not update %s's record for this run: %s", ctx.pipeline_id, exc)
        return False
    return True


def _finish(
    ctx: Plan,
    code: int,
    interrupted: bool,
    record: Record,
    on_success: OnSuccess,
    on_failure: OnFailure,
    preserve_ttl: timedelta | None,
) -> RunResult:
    """Apply the success or failure policy to the environment."""
    if code == 0 and not interrupted:
        if on_success is OnSuccess.keep:
            return RunResult(code, "kept", ctx.pipeline_id, record)
        lifecycle.down(ctx)
        return RunResult(code, "destroyed", ctx.pipeline_id, None)
    if on_failure is OnFailure.destroy:
        lifecycle.down(ctx)
        return RunResult(code, "destroyed", ctx.pipeline_id, None, interrupted)
    preserved = lifecycle.down(ctx, preserve=True, ttl=preserve_ttl)
    return RunResult(code, "preserved", ctx.pipeline_id, preserved, interrupted)


def _execute(
    command: Sequence[str], environ: Mapping[str, str], signals: _Signals, grace: float
) -> int:
    """Run ``command`` in its own process group and return its shell-style exit code."""
    try:
        # preexec_fn is unsafe only where another thread may hold a lock the child needs; this
        # one makes a single prctl system call through a function resolved beforehand.
        proc = subprocess.Popen(
            list(command),
            env=dict(environ),
            process_group=0,
            preexec_fn=_dies_with_us(),  # noqa: PLW1509
        )
    except FileNotFoundError:
        log.error("command not found: %s", command[0])
        return 127
    except PermissionError:
        log.error("command not executable: %s", command[0])
        return 126
    signals.child_group = proc.pid
    if signals.received is not None:  # a signal arrived between up and the spawn
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signals.received)
    with _foreground(proc.pid):
        deadline: float | None = None
        while True:
            try:
                code = proc.wait(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                pass
            if signals.received is not None and deadline is None:
                deadline = time.monotonic() + grace
            if deadline is not None and time.monotonic() >= deadline:
                log.warning(
                    "the command did not exit within %.0fs of the signal: killing it", grace
                )
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                deadline = float("inf")
    signals.child_group = None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # any of its children left behind
    return 128 - code if code < 0 else code


def _dies_with_us() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the command sent SIGTERM if envkit dies first (Linux
    ``PR_SET_PDEATHSIG``): a SIGKILLed ``envkit run`` must not leave its command running against
    an environment the next ``down`` or ``reap`` destroys. The signal reaches the command's own
    process only: a shell that dies of it does not pass it on to what it started. None where
    prctl is not available."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_parent_death_signal() -> None:  # runs in the child, between fork and exec
        # envkit's own SIGTERM handler was inherited: until exec it would only take note.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:  # envkit died before the prctl took effect
            os._exit(128 + int(signal.SIGTERM))

    return set_parent_death_signal


@contextlib.contextmanager
def _foreground(group: int) -> Iterator[None]:
    """Hand the terminal to the command's group while it runs, so it can read the terminal and
    Ctrl-C reaches it (and only it) as in a shell; give it back afterwards."""
    try:
        tty = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
        ours = os.getpgrp()
        if tty is None or os.tcgetpgrp(tty) != ours:
            tty = None
    except (OSError, ValueError):
        tty = None
    if tty is None:
        yield
        return
    old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # we are about to be in the background
    try:
        os.tcsetpgrp(tty, group)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGCONT)  # in case it touched the terminal before we did
        yield
    finally:
        with contextlib.suppress(OSError):
            os.tcsetpgrp(tty, ours)
        signal.signal(signal.SIGTTOU, old)


def debug_instructions(record: Record, *, show_secrets: bool = False) -> list[str]:
    """How to debug a preserved environment: connect, logs, extend, destroy (no secret unless
    ``show_secrets``)."""
    pid = record.pipeline_id
    shown = visible(record.outputs, show_secrets)
    lines = [f"Environment {pid} is preserved for debugging until {record.expires_at}."]
    url = shown.get("DATABASE_URL")
    if url:
        lines.append(f"  connect:  psql '{url}'")
        if not show_secrets:
            lines.append(
                f"            password hidden; load every output with: "
                f'eval "$(envkit outputs {pid} --format env --show-secrets)"'
            )
    lines.append(f"  logs:     envkit logs {pid}")
    lines.append(f"  extend:   envkit extend {pid} --ttl 24h   (or: envkit up {pid} --ttl 24h)")
    lines.append(f"  destroy:  envkit down {pid}")
    lines.append(f"  history:  envkit history {pid}")
    return lines
