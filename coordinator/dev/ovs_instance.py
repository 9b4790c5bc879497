"""A private Open vSwitch (ovsdb-server + ovs-vswitchd) living in one directory and one namespace.

Follows /work/shared/OVS_NOTES.md: the database, sockets, pidfiles and logs all live in ``rundir``;
``other_config:userspace-tso-enable=true`` is set before ovs-vswitchd starts; ovs-vswitchd runs
inside its own network namespace (owned by the instance, deleted by :meth:`OvsInstance.stop`) so
several instances can run side by side. Bridges must use ``datapath_type=netdev`` (no kernel
module). Daemons are only ever signalled by the pids in their own pidfiles.

Example::

    with OvsInstance.start(tmp / "ovs") as ovs:
        ovs.vsctl("add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev")
        ovs.ofctl("add-flow", "br0", "actions=NORMAL")
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from coordinator.dev import netns as netns_mod
from coordinator.dev.pids import pid_alive, read_pid, stop_pid

__all__ = ["OVS_SCHEMA", "OvsError", "OvsInstance", "pid_alive", "read_pid", "stop_pid"]

OVS_SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")

DEFAULT_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
_POLL = 0.05

_OVSDB = "ovsdb-server"
_VSWITCHD = "ovs-vswitchd"
_NETNS_FILE = "netns"


class OvsError(RuntimeError):
    """An OVS command or daemon failed."""

    def __init__(self, message: str, *, argv: Sequence[str] = (), stderr: str = "") -> None:
        self.argv = list(argv)
        self.stderr = stderr
        super().__init__(message)


def _same_netns(pid: int, ns: str) -> bool:
    try:
        a = os.stat(f"/proc/{pid}/ns/net")
        b = os.stat(f"/run/netns/{ns}")
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        content = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(content[-lines:])


class OvsInstance:
    """One private Open vSwitch. Create it with :meth:`start`; stop it with :meth:`stop`."""

    def __init__(self, rundir: Path, netns: str) -> None:
        """Describe an instance without starting anything (use :meth:`start` to run one)."""
        self._rundir = Path(rundir).resolve()
        self._netns = netns

    # ------------------------------------------------------------------ paths and properties

    @property
    def rundir(self) -> Path:
        return self._rundir

    @property
    def netns(self) -> str:
        """The network namespace ovs-vswitchd runs in (owned by this instance)."""
        return self._netns

    @property
    def db_path(self) -> Path:
        return self._rundir / "conf.db"

    @property
    def db_sock(self) -> Path:
        return self._rundir / "db.sock"

    @property
    def db_remote(self) -> str:
        """The OVSDB remote for clients, e.g. ``unix:/tmp/x/db.sock``."""
        return f"unix:{self.db_sock}"

    @property
    def vswitchd_ctl(self) -> Path:
        """ovs-vswitchd's control socket: ``RUNDIR/ovs-vswitchd.ctl``, or
        ``ovs-vswitchd.<pid>.ctl`` when it was started without ``--unixctl``
        (as the packaged daemon names it; see :meth:`start_vswitchd`)."""
        plain = self._rundir / f"{_VSWITCHD}.ctl"
        if plain.exists():
            return plain
        pid = self.vswitchd_pid
        return plain if pid is None else self._rundir / f"{_VSWITCHD}.{pid}.ctl"

    @property
    def ovsdb_ctl(self) -> Path:
        return self._rundir / f"{_OVSDB}.ctl"

    @property
    def vswitchd_pidfile(self) -> Path:
        return self._rundir / f"{_VSWITCHD}.pid"

    @property
    def ovsdb_pidfile(self) -> Path:
        return self._rundir / f"{_OVSDB}.pid"

    @property
    def vswitchd_log(self) -> Path:
        return self._rundir / f"{_VSWITCHD}.log"

    @property
    def ovsdb_log(self) -> Path:
        return self._rundir / f"{_OVSDB}.log"

    @property
    def vswitchd_pid(self) -> int | None:
        """Pid of the running ovs-vswitchd, or None."""
        return read_pid(self.vswitchd_pidfile, _VSWITCHD)

    @property
    def ovsdb_pid(self) -> int | None:
        """Pid of the running ovsdb-server, or None."""
        return read_pid(self.ovsdb_pidfile, _OVSDB)

    @property
    def env(self) -> dict[str, str]:
        """The current environment plus OVS_RUNDIR/DBDIR/LOGDIR/SYSCONFDIR set to :attr:`rundir`.

        Pass it as ``env=`` to subprocesses (e.g. a plain ``ovs-ofctl BRIDGE ...`` then finds
        ``RUNDIR/BRIDGE.mgmt``).
        """
        env = dict(os.environ)
        d = str(self._rundir)
        env.update(OVS_RUNDIR=d, OVS_DBDIR=d, OVS_LOGDIR=d, OVS_SYSCONFDIR=d)
        return env

    def mgmt(self, bridge: str) -> str:
        """The OpenFlow management socket of ``bridge`` as an ovs-ofctl target."""
        return f"unix:{self._rundir / (bridge + '.mgmt')}"

    def __repr__(self) -> str:
        return f"OvsInstance(rundir={str(self._rundir)!r}, netns={self._netns!r})"

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def start(
        cls, rundir: Path, netns: str | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> OvsInstance:
        """Start (or reuse) the private OVS whose state lives in ``rundir``.

        - Fresh directory: creates the database, starts ovsdb-server, initialises the db, enables
          userspace TSO, creates the namespace ``netns`` (a unique name if None) and starts
          ovs-vswitchd in it.
        - Directory with live daemons (pidfiles naming running processes): reuses them.
        - Existing database with dead daemons: starts whichever is not running on the same db and
          in the namespace recorded in ``rundir`` (recreated if gone).

        On failure, whatever this call started is stopped again and :class:`OvsError` is raised.
        """
        rundir = Path(rundir).resolve()
        rundir.mkdir(parents=True, exist_ok=True)
        netns_file = rundir / _NETNS_FILE
        recorded = netns_file.read_text().strip() if netns_file.exists() else None
        live_vswitchd = read_pid(rundir / f"{_VSWITCHD}.pid", _VSWITCHD)

        if netns is None:
            if recorded:
                netns = recorded
            elif live_vswitchd is not None:
                raise OvsError(
                    f"{rundir}: ovs-vswitchd (pid {live_vswitchd}) runs but its namespace is not "
                    f"recorded in {netns_file}; pass netns="
                )
            else:
                netns = netns_mod.unique_name("ovs-")
        elif (
            recorded and recorded != netns and (live_vswitchd is not None or netns_mod.netns_exists(recorded))
        ):
            raise OvsError(f"{rundir} belongs to an OVS instance in namespace {recorded!r}, not {netns!r}")
        if live_vswitchd is not None and not _same_netns(live_vswitchd, netns):
            raise OvsError(
                f"{rundir}: running ovs-vswitchd (pid {live_vswitchd}) is not in namespace {netns!r}"
            )

        inst = cls(rundir, netns)
        netns_file.write_text(netns + "\n")
        ovsdb_was_running = inst.ovsdb_pid is not None
        vswitchd_was_running = live_vswitchd is not None
        netns_existed = netns_mod.netns_exists(netns)
        try:
            if not inst.db_path.exists():
                inst._run(["ovsdb-tool", "create", str(inst.db_path), str(OVS_SCHEMA)], timeout=timeout)
            if not ovsdb_was_running:
                inst._start_ovsdb(timeout)
            inst.vsctl("--no-wait", "init", timeout=timeout)
            # Must be in the db before ovs-vswitchd starts (it is read once, at startup):
            # without it veth traffic carries partial checksums and conntrack marks TCP +inv.
            inst.vsctl(
                "--no-wait",
                "set",
                "Open_vSwitch",
                ".",
                "other_config:userspace-tso-enable=true",
                timeout=timeout,
            )
            inst.start_vswitchd(timeout=timeout)  # only waits for readiness if already running
        except BaseException:
            # Undo what this call started; leave alone what was running before.
            if not vswitchd_was_running:
                inst._stop_quietly(inst.vswitchd_pidfile, _VSWITCHD)
            if not ovsdb_was_running:
                inst._stop_quietly(inst.ovsdb_pidfile, _OVSDB)
            if not netns_existed and not vswitchd_was_running:
                with contextlib.suppress(netns_mod.NetnsError):
                    netns_mod.delete_netns(netns)
            raise
        return inst

    def _stop_quietly(self, pidfile: Path, comm: str) -> None:
        with contextlib.suppress(OvsError, OSError):
            self._stop_daemon(pidfile, comm)

    def _start_ovsdb(self, timeout: float) -> None:
        argv = [
            _OVSDB,
            str(self.db_path),
            f"--remote=punix:{self.db_sock}",
            f"--pidfile={self.ovsdb_pidfile}",
            f"--unixctl={self.ovsdb_ctl}",
            f"--log-file={self.ovsdb_log}",
            "--detach",
        ]
        self._run_daemon(argv, self.ovsdb_pidfile, _OVSDB, self.ovsdb_log, timeout)

    def start_vswitchd(self, *, timeout: float = DEFAULT_TIMEOUT, ctl_named_by_pid: bool = False) -> None:
        """Start ovs-vswitchd in :attr:`netns` (created if missing) and wait until it answers.

        Does nothing but wait for readiness if it is already running. ``ctl_named_by_pid``:
        no ``--unixctl``, so the control socket is ``RUNDIR/ovs-vswitchd.<pid>.ctl`` and moves
        with every restart, as with the packaged daemon.
        """
        if self.vswitchd_pid is not None:
            self._wait_vswitchd_ready(timeout)
            return
        if self.ovsdb_pid is None:
            raise OvsError(f"{self}: ovsdb-server is not running; cannot start ovs-vswitchd")
        if not netns_mod.netns_exists(self._netns):
            netns_mod.create_netns(self._netns)
        plain_ctl = self._rundir / f"{_VSWITCHD}.ctl"
        if ctl_named_by_pid:
            plain_ctl.unlink(missing_ok=True)  # a killed daemon's socket would be taken for the live one
        unixctl = [] if ctl_named_by_pid else [f"--unixctl={plain_ctl}"]
        argv = [
            "ip",
            "netns",
            "exec",
            self._netns,
            _VSWITCHD,
            self.db_remote,
            f"--pidfile={self.vswitchd_pidfile}",
            *unixctl,
            f"--log-file={self.vswitchd_log}",
            "--detach",
        ]
        self._run_daemon(argv, self.vswitchd_pidfile, _VSWITCHD, self.vswitchd_log, timeout)
        self._wait_vswitchd_ready(timeout)

    def _run_daemon(self, argv: list[str], pidfile: Path, comm: str, log: Path, timeout: float) -> None:
        # With --detach the command returns once the daemon is initialised; the daemon itself
        # redirects its standard fds to /dev/null, so capturing the output does not block.
        try:
            proc = subprocess.run(
                argv, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            self._stop_daemon(pidfile, comm)  # it may have written its pidfile already
            raise OvsError(
                f"{comm} did not finish starting within {timeout}s; log tail:\n{_tail(log)}",
                argv=argv,
            ) from exc
        if proc.returncode != 0:
            raise OvsError(
                f"{comm} failed to start (status {proc.returncode}): {proc.stderr.strip()}\n"
                f"log tail:\n{_tail(log)}",
                argv=argv,
                stderr=proc.stderr,
            )
        if read_pid(pidfile, comm) is None:
            raise OvsError(f"{comm} exited right after starting; log tail:\n{_tail(log)}", argv=argv)

    def _wait_vswitchd_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            if self.vswitchd_pid is None:
                raise OvsError(f"ovs-vswitchd is not running; log tail:\n{_tail(self.vswitchd_log)}")
            try:
                proc = subprocess.run(
                    ["ovs-appctl", "-t", str(self.vswitchd_ctl), "--timeout=2", "version"],
                    env=self.env,
                    capture_output=True,
                    text=True,
                    timeout=5,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                last = "ovs-appctl timed out"
            else:
                if proc.returncode == 0:
                    return
                last = proc.stderr.strip()
            if time.monotonic() > deadline:
                raise OvsError(f"ovs-vswitchd does not answer on {self.vswitchd_ctl}: {last}")
            time.sleep(_POLL * 2)

    def _stop_daemon(self, pidfile: Path, comm: str, timeout: float = _STOP_TIMEOUT) -> None:
        pid = read_pid(pidfile, comm)
        if pid is not None and not stop_pid(pid, timeout):
            raise OvsError(f"{comm} (pid {pid}) survived SIGKILL")

    def stop_vswitchd(self, *, timeout: float = _STOP_TIMEOUT) -> None:
        """Stop ovs-vswitchd (SIGTERM, then SIGKILL) by its pidfile; the db and namespace stay."""
        self._stop_daemon(self.vswitchd_pidfile, _VSWITCHD, timeout)

    def stop(self, *, timeout: float = _STOP_TIMEOUT) -> None:
        """Stop both daemons by their pidfiles and delete the namespace.

        Idempotent; already dead daemons and a missing namespace are fine. The files in
        :attr:`rundir` (database, logs) are kept, so :meth:`start` can bring the instance back.
        """
        errors: list[str] = []
        for pidfile, comm in ((self.vswitchd_pidfile, _VSWITCHD), (self.ovsdb_pidfile, _OVSDB)):
            try:
                self._stop_daemon(pidfile, comm, timeout)
            except (OvsError, OSError) as exc:
                errors.append(str(exc))
        try:
            netns_mod.delete_netns(self._netns)
        except (netns_mod.NetnsError, OSError) as exc:
            errors.append(str(exc))
        if errors:
            raise OvsError("; ".join(errors))

    def __enter__(self) -> OvsInstance:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ commands

    def _run(self, argv: list[str], *, timeout: float = DEFAULT_TIMEOUT, input: str | None = None) -> str:
        try:
            proc = subprocess.run(
                argv,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
                input=input,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise OvsError(f"{' '.join(argv)!r} timed out after {timeout}s", argv=argv) from exc
        except FileNotFoundError as exc:
            raise OvsError(f"executable not found: {argv[0]}", argv=argv) from exc
        if proc.returncode != 0:
            raise OvsError(
                f"{' '.join(argv)!r} exited with status {proc.returncode}: "
                f"{proc.stderr.strip() or '(no stderr)'}",
                argv=argv,
                stderr=proc.stderr,
            )
        return proc.stdout.strip()

    def vsctl(self, *args: str, timeout: float = DEFAULT_TIMEOUT) -> str:
        """Run ``ovs-vsctl`` against this db; returns stripped stdout.

        Without ``--no-wait`` ovs-vsctl waits for ovs-vswitchd to apply the change (bounded by
        ``timeout``).
        """
        argv = ["ovs-vsctl", f"--db={self.db_remote}", f"--timeout={max(1, int(timeout))}", *args]
        return self._run(argv, timeout=timeout + 5)

    def ofctl(
        self,
        *args: str,
        protocol: str = "OpenFlow13",
        input: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> str:
        """Run ``ovs-ofctl -O PROTOCOL ARGS``; a bare bridge name resolves to ``RUNDIR/BR.mgmt``.

        ``input`` is fed on stdin (for ``add-flows BR -`` and friends).
        """
        argv = ["ovs-ofctl", "-O", protocol, f"--timeout={max(1, int(timeout))}", *args]
        return self._run(argv, timeout=timeout + 5, input=input)

    def appctl(self, *args: str, target: Path | None = None, timeout: float = DEFAULT_TIMEOUT) -> str:
        """Run ``ovs-appctl`` against ovs-vswitchd (or ``target``, e.g. :attr:`ovsdb_ctl`)."""
        ctl = target if target is not None else self.vswitchd_ctl
        argv = ["ovs-appctl", "-t", str(ctl), f"--timeout={max(1, int(timeout))}", *args]
        return self._run(argv, timeout=timeout + 5)

    def dpctl_dump_conntrack(self, zone: int | None = None) -> list[str]:
        """Entries of the userspace datapath's conntrack (optionally one zone), one per line."""
        args = ["dpctl/dump-conntrack"]
        if zone is not None:
            args.append(f"zone={zone}")
        return [line for line in self.appctl(*args).splitlines() if line.strip()]

    def dpctl_flush_conntrack(self, zone: int | None = None) -> None:
        """Flush the userspace datapath's conntrack (optionally one zone)."""
        args = ["dpctl/flush-conntrack"]
        if zone is not None:
            args.append(f"zone={zone}")
        self.appctl(*args)
