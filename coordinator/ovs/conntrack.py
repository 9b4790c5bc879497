"""Conntrack of the OVS datapath through ``dpctl/*`` commands: dump, flush, revoke, zone limits.

The commands go over ovs-vswitchd's control socket (:class:`coordinator.ovs.unixctl.UnixctlClient`,
one connection kept open), not through an ``ovs-appctl`` process each; the text they return and
the errors they give are the same.

When a NetworkScope is narrowed, connections that the new scope would no longer admit must not live
on as ``+est`` entries. :func:`coordinator.policy.revocation.revoked` (pure, beside the evaluator)
decides which entries those are (the packet that opened the connection, replayed as
``ct_state=new`` against the new scope), and :meth:`ConntrackControl.revoke` flushes exactly them;
established connections the scope still allows are left alone.

Facts about OVS 3.1.0 with the userspace (``netdev``) datapath, checked on real traffic except
where marked as read from the OVS source:

- ``dpctl/dump-conntrack zone=N`` prints one entry per line, e.g.
  ``tcp,orig=(src=A,dst=B,sport=P,dport=Q),reply=(...),zone=5,protoinfo=(state=ESTABLISHED)``;
  ``zone=`` is omitted for zone 0, ``mark=``/``labels=`` only when non-zero; ICMP tuples carry
  ``id=,type=,code=`` (source: newer releases print only ``id=`` unless ``-m``); protocols
  without a name are printed as numbers (``253,orig=(...,sport=0,dport=0)``).
- ``dpctl/flush-conntrack zone=N 'ct_nw_src=A,ct_nw_dst=B,ct_nw_proto=6,ct_tp_src=P,ct_tp_dst=Q'``
  removes one entry (IPv6: ``ct_ipv6_src``/``ct_ipv6_dst``; ICMP: ``icmp_type=,icmp_code=,icmp_id=``
  instead of the ports, and they must come after ``ct_nw_proto``). A full tuple that matches
  nothing fails with ``failed to flush conntrack (No such file or directory)``.
- **Flushing an ICMPv6 entry by tuple aborts ovs-vswitchd** (any ICMPv6 type, full or partial
  tuple): the userspace conntrack builds the lookup key with the IPv4 ``reverse_icmp_type()``,
  which hits ``OVS_NOT_REACHED()`` for types it does not know (source: so do ICMPv4 types other
  than 0/8/13/14/15/16, which conntrack never creates entries for anyway). So
  :class:`ConntrackControl` refuses those flushes (raising :class:`ConntrackUnsupportedError`
  without running anything) unless told the datapath is not the userspace one. Flushing a whole
  zone is safe.
- ``dpctl/ct-set-limits zone=N,limit=M`` **is enforced** by the userspace datapath: once a zone
  holds M connections committed after the limit was set, further commits create no entry (so a
  reply that must match ``+est`` is dropped). Connections that existed before the limit was set
  are not counted, so set the limit before the zone carries traffic. ``limit=0`` means unlimited;
  ``ct-get-limits`` reports the default limit for zones without their own.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from coordinator.ovs.conntrack_text import (
    MAX_LIMIT,
    MAX_ZONE,
    ZoneLimit,
    flush_tuple,
    parse_dump,
    parse_dump_lines,
    parse_entry,
    parse_limits,
    userspace_flush_problem,
)
from coordinator.ovs.process import OvsCommandError
from coordinator.ovs.unixctl import Reply, UnixctlClient, UnixctlError
from coordinator.policy.revocation import (
    ConnEntry,
    OwnAddress,
    connection_direction,
    connection_packet,
    revoked,
)
from coordinator.policy.scope import Scope

__all__ = [
    "ConnEntry",
    "ConntrackControl",
    "ConntrackError",
    "ConntrackUnsupportedError",
    "RevokeResult",
    "ZoneLimit",
    "connection_direction",
    "connection_packet",
    "flush_tuple",
    "parse_dump",
    "parse_dump_lines",
    "parse_entry",
    "parse_limits",
    "revoked",
    "userspace_flush_problem",
]

DEFAULT_TIMEOUT: Final = 10.0

#: What ovs-vswitchd answers when a full flush tuple matches no entry.
_ENOENT_TEXT: Final = "No such file or directory"


def _check_zone(zone: int) -> int:
    if isinstance(zone, bool) or not isinstance(zone, int) or not 0 <= zone <= MAX_ZONE:
        raise ValueError(f"conntrack zone {zone!r} is outside 0..{MAX_ZONE}")
    return zone


def _check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_LIMIT:
        raise ValueError(f"conntrack limit {limit!r} is outside 0..{MAX_LIMIT}")
    return limit


# --------------------------------------------------------------------------- the control


class ConntrackError(OvsCommandError):
    """A ``dpctl/...`` command failed, or the control socket could not be used (or the command
    was refused, see the subclass); ``argv`` is the command as ovs-appctl would run it and
    ``stderr`` the error text ovs-vswitchd gave."""


class ConntrackUnsupportedError(ConntrackError):
    """A flush was refused because the datapath would crash on it (nothing was run)."""


@dataclass(frozen=True)
class RevokeResult:
    """What :meth:`ConntrackControl.revoke_entries` did with the revoked entries of a zone."""

    flushed: tuple[ConnEntry, ...] = ()
    missing: tuple[ConnEntry, ...] = ()  # gone between dump and flush (expired or closed)
    unflushable: tuple[ConnEntry, ...] = ()  # refused (ICMPv6 in the userspace datapath); still there

    @property
    def revoked(self) -> tuple[ConnEntry, ...]:
        return self.flushed + self.missing + self.unflushable

    def note(self) -> str:
        """What it did, for an event message ("" when nothing was revoked)."""
        note = f"; {len(self.flushed)} revoked connections cut" if self.flushed else ""
        if self.unflushable:
            # OVS 3.1's userspace conntrack cannot flush ICMPv6 entries by
            # tuple; they stay until they time out (and never carry new flows).
            note += f"; {len(self.unflushable)} revoked ICMPv6 entries left to expire"
        return note


class ConntrackControl:
    """Conntrack of one ovs-vswitchd, over its control socket.

    ``control`` is a :class:`UnixctlClient` to share (its owner closes it), or the socket's
    path (then this control opens its own client; :meth:`close` closes it). ``datapath``
    names the dpif (e.g. ``netdev@ovs-netdev``) when ovs-vswitchd has several;
    ``userspace_datapath`` (default) refuses the tuple flushes that abort OVS 3.1's userspace
    conntrack (see the module docstring); pass False for the kernel datapath.
    """

    def __init__(
        self,
        control: UnixctlClient | str | os.PathLike[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        datapath: str | None = None,
        userspace_datapath: bool = True,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._owned = not isinstance(control, UnixctlClient)
        self._client = (
            control if isinstance(control, UnixctlClient) else UnixctlClient(control, timeout=timeout)
        )
        self._dp = [datapath] if datapath else []
        self._userspace = userspace_datapath

    def __repr__(self) -> str:
        return f"ConntrackControl({self._client.path!r})"

    async def close(self) -> None:
        """Close the control connection if this control opened it."""
        if self._owned:
            await self._client.close()

    async def __aenter__(self) -> ConntrackControl:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _argv(self, command: Sequence[str]) -> list[str]:
        """``command`` as ovs-appctl would run it (for error messages)."""
        return ["ovs-appctl", "-t", self._client.path, *command]

    async def _call(self, *command: str, missing_ok: bool = False) -> str | None:
        """One command; its output, or None if ``missing_ok`` and OVS answered ENOENT."""
        (reply,) = await self._batch([command])
        if reply.error is None:
            return reply.result
        if missing_ok and _ENOENT_TEXT in reply.error:
            return None
        argv = self._argv(command)
        raise ConntrackError(
            f"ovs-appctl {' '.join(command)} failed: {reply.error}", argv=argv, stderr=reply.error
        )

    async def _batch(self, commands: Sequence[Sequence[str]]) -> list[Reply]:
        """Many commands in one exchange on the control connection; a reply
        may carry OVS's error text."""
        try:
            return await self._client.call_many(commands)
        except UnixctlError as exc:
            raise ConntrackError(str(exc), argv=self._argv(commands[0])) from exc

    async def _run_all(self, commands: Sequence[Sequence[str]]) -> None:
        """Many commands in one exchange; the first error raises."""
        for command, reply in zip(commands, await self._batch(commands), strict=True):
            if not reply.ok:
                raise ConntrackError(
                    f"ovs-appctl {' '.join(command)} failed: {reply.error}",
                    argv=self._argv(command),
                    stderr=reply.error or "",
                )

    async def dump(self, zone: int) -> list[ConnEntry]:
        """The entries of ``zone``."""
        out = await self._call("dpctl/dump-conntrack", *self._dp, f"zone={_check_zone(zone)}")
        assert out is not None
        return [entry for entry in parse_dump(out) if entry.zone == zone]

    async def flush_entry(self, entry: ConnEntry) -> bool:
        """Remove ``entry`` (in its zone). False if it was already gone.

        Raises :class:`ConntrackUnsupportedError` (running nothing) for entries whose tuple flush
        would abort a userspace-datapath ovs-vswitchd.
        """
        if self._userspace:
            problem = userspace_flush_problem(entry)
            if problem:
                raise ConntrackUnsupportedError(f"refusing to flush {entry.line or entry}: {problem}")
        out = await self._call(
            "dpctl/flush-conntrack",
            *self._dp,
            f"zone={_check_zone(entry.zone)}",
            flush_tuple(entry),
            missing_ok=True,
        )
        return out is not None

    async def flush_zone(self, zone: int) -> None:
        """Remove every entry of ``zone``."""
        await self._call("dpctl/flush-conntrack", *self._dp, f"zone={_check_zone(zone)}")

    async def clear_zone(self, zone: int) -> None:
        """Remove every entry of ``zone`` and its own limit, in one exchange
        (what a slot given up leaves behind)."""
        zone = _check_zone(zone)
        await self._run_all(
            [
                ["dpctl/flush-conntrack", *self._dp, f"zone={zone}"],
                ["dpctl/ct-del-limits", *self._dp, f"zone={zone}"],
            ]
        )

    async def flush_zones(self, zones: Iterable[int]) -> None:
        """Remove every entry of each of ``zones``: one flush per zone, all
        over one connection (a thousand zones take a fraction of a second)."""
        wanted = sorted({_check_zone(zone) for zone in zones})
        replies = await self._batch([["dpctl/flush-conntrack", *self._dp, f"zone={zone}"] for zone in wanted])
        failed = [(zone, r.error) for zone, r in zip(wanted, replies, strict=True) if not r.ok]
        if failed:
            zone, error = failed[0]
            raise ConntrackError(
                f"flushing {len(failed)} of {len(wanted)} zones failed; zone={zone}: {error}"
            )

    async def flush_entries(self, entries: Sequence[ConnEntry]) -> tuple[list[ConnEntry], list[ConnEntry]]:
        """Remove each of ``entries`` by its tuple, all over one connection;
        (flushed, already gone). Raises ConntrackUnsupportedError (running
        nothing) if one would abort a userspace-datapath ovs-vswitchd."""
        if self._userspace:
            for entry in entries:
                problem = userspace_flush_problem(entry)
                if problem:
                    raise ConntrackUnsupportedError(f"refusing to flush {entry.line or entry}: {problem}")
        commands = [
            ["dpctl/flush-conntrack", *self._dp, f"zone={_check_zone(e.zone)}", flush_tuple(e)]
            for e in entries
        ]
        flushed: list[ConnEntry] = []
        missing: list[ConnEntry] = []
        for entry, reply in zip(entries, await self._batch(commands), strict=True):
            if reply.ok:
                flushed.append(entry)
            elif _ENOENT_TEXT in (reply.error or ""):
                missing.append(entry)
            else:
                raise ConntrackError(f"dpctl/flush-conntrack {flush_tuple(entry)} failed: {reply.error}")
        return flushed, missing

    async def revoke_entries(
        self, zone: int, scope: Scope, own_addresses: Iterable[OwnAddress] | None = None
    ) -> RevokeResult:
        """Dump ``zone``, and flush each entry ``scope`` no longer allows (see :func:`revoked`),
        in one batch; the entries it still allows survive."""
        gone = revoked(await self.dump(zone), scope, own_addresses)
        unflushable = [e for e in gone if self._userspace and userspace_flush_problem(e)]
        flushed, missing = await self.flush_entries([e for e in gone if e not in unflushable])
        return RevokeResult(tuple(flushed), tuple(missing), tuple(unflushable))

    async def revoke(self, zone: int, scope: Scope, own_addresses: Iterable[OwnAddress] | None = None) -> int:
        """Flush the entries of ``zone`` that ``scope`` no longer allows; how many were flushed."""
        return len((await self.revoke_entries(zone, scope, own_addresses)).flushed)

    async def set_zone_limit(self, zone: int, limit: int) -> None:
        """Allow at most ``limit`` connections in ``zone`` (0 = unlimited)."""
        await self._call(
            "dpctl/ct-set-limits", *self._dp, f"zone={_check_zone(zone)},limit={_check_limit(limit)}"
        )

    async def set_zone_limits(self, zones: Iterable[int], limit: int, *, per_call: int = 200) -> None:
        """Allow at most ``limit`` connections in each of ``zones``; one
        command per ``per_call`` zones (it takes many), all in one exchange."""
        wanted = sorted({_check_zone(zone) for zone in zones})
        value = _check_limit(limit)
        await self._run_all(
            [
                [
                    "dpctl/ct-set-limits",
                    *self._dp,
                    *(f"zone={zone},limit={value}" for zone in wanted[i : i + per_call]),
                ]
                for i in range(0, len(wanted), per_call)
            ]
        )

    async def enable_fragment_reassembly(self) -> None:
        """Let the userspace datapath's conntrack reassemble IPv4 and IPv6
        fragments (off by default there: every fragment would be invalid).
        The kernel datapath always reassembles before conntrack."""
        if self._userspace:
            await self._run_all([["dpctl/ipf-set-enabled", *self._dp, family] for family in ("v4", "v6")])

    async def set_default_zone_limit(self, limit: int) -> None:
        """The limit of zones without their own (0 = unlimited)."""
        await self._call("dpctl/ct-set-limits", *self._dp, f"default={_check_limit(limit)}")

    async def zone_limit_status(self, zones: Iterable[int] = ()) -> dict[int, ZoneLimit]:
        """Limit and count of ``zones`` (zones without their own limit report the default), or
        of every zone with its own limit if ``zones`` is empty."""
        wanted = sorted({_check_zone(zone) for zone in zones})
        args = [f"zone={','.join(str(zone) for zone in wanted)}"] if wanted else []
        out = await self._call("dpctl/ct-get-limits", *self._dp, *args)
        assert out is not None
        _, limits = parse_limits(out)
        return limits

    async def get_zone_limits(self, zones: Iterable[int] = ()) -> dict[int, int]:
        """zone -> limit (0 = unlimited) for ``zones``, or for every zone with its own limit."""
        return {zone: status.limit for zone, status in (await self.zone_limit_status(zones)).items()}

    async def delete_zone_limit(self, zone: int) -> None:
        """Remove ``zone``'s own limit (it falls back to the default limit)."""
        await self._call("dpctl/ct-del-limits", *self._dp, f"zone={_check_zone(zone)}")
