"""Conntrack of the OVS datapath through ``ovs-appctl dpctl/*``: dump, flush, revoke, zone limits.

When a NetworkScope is narrowed, connections that the new scope would no longer admit must not live
on as ``+est`` entries. :func:`revoked` decides which entries those are with the reference evaluator
(the packet that opened the connection, replayed as ``ct_state=new`` against the new scope), and
:meth:`ConntrackControl.revoke` flushes exactly them; established connections the scope still allows
are left alone.

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

import asyncio
import ipaddress
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from coordinator.attachment_identity import MAX_ZONE
from coordinator.ovs.unixctl import Reply, UnixctlError, call_many
from coordinator.policy.evaluator import evaluate
from coordinator.policy.packet import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    PORT_PROTOCOLS,
    CtState,
    Direction,
    Packet,
)
from coordinator.policy.scope import IPNetwork, Scope

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

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

MAX_LIMIT: Final = 0xFFFFFFFF

#: Names ``ct_dpif_format_ipproto`` prints instead of the protocol number.
PROTOCOL_NAMES: Final = {
    "icmp": IPPROTO_ICMP,
    "igmp": 2,
    "tcp": 6,
    "udp": 17,
    "dccp": 33,
    "icmpv6": IPPROTO_ICMPV6,
    "sctp": 132,
    "udplite": 136,
}

ICMP_ECHO_REQUEST: Final = 8
ICMPV6_ECHO_REQUEST: Final = 128

#: ICMPv4 types OVS's userspace ``reverse_icmp_type()`` knows; any other type in a flush tuple
#: aborts ovs-vswitchd (OVS 3.1).
_USERSPACE_FLUSHABLE_ICMP_TYPES: Final = frozenset({0, 8, 13, 14, 15, 16})

#: What ovs-vswitchd answers when a full flush tuple matches no entry.
_ENOENT_TEXT: Final = "No such file or directory"


# --------------------------------------------------------------------------- entries and parsing


@dataclass(frozen=True)
class ConnEntry:
    """One conntrack entry, described by its original direction (the packet that opened it).

    ``sport``/``dport`` are those of the dump (0 for ICMP and for protocols without ports);
    ``icmp_type``/``icmp_code``/``icmp_id`` are set only for ICMP and ICMPv6 (type and code may be
    None when the dump does not print them). ``state`` is the TCP state text (``ESTABLISHED``,
    ``TIME_WAIT``...) or None. ``line`` is the dump line the entry came from (not compared).
    """

    protocol: int
    src: IPAddress
    dst: IPAddress
    sport: int = 0
    dport: int = 0
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_id: int | None = None
    zone: int = 0
    mark: int = 0
    labels: int = 0
    state: str | None = None
    line: str = field(default="", compare=False, repr=False)

    @property
    def version(self) -> int:
        """IP version, 4 or 6."""
        return self.src.version

    @property
    def is_icmp(self) -> bool:
        return self.protocol in (IPPROTO_ICMP, IPPROTO_ICMPV6)


def _split_top(text: str) -> list[str]:
    """Split at commas outside parentheses; raises ValueError on unbalanced parentheses."""
    parts: list[str] = []
    depth = 0
    start = 0
    for index, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced ')'")
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    if depth:
        raise ValueError("unbalanced '('")
    parts.append(text[start:])
    return parts


def _key_values(text: str) -> dict[str, str]:
    """``a=1,b=(x=2,y=3)`` -> {"a": "1", "b": "(x=2,y=3)"}; a part without '=' is an error."""
    result: dict[str, str] = {}
    for part in _split_top(text):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ValueError(f"not key=value: {part!r}")
        result[key.strip()] = value.strip()
    return result


def _group(value: str) -> dict[str, str]:
    if not (value.startswith("(") and value.endswith(")")):
        raise ValueError(f"expected a parenthesised group: {value!r}")
    inner = value[1:-1]
    return _key_values(inner) if inner else {}


def _int(value: str, low: int, high: int) -> int:
    number = int(value)
    if not low <= number <= high:
        raise ValueError(f"{number} outside {low}..{high}")
    return number


def _protocol(token: str) -> int:
    token = token.strip()
    if token in PROTOCOL_NAMES:
        return PROTOCOL_NAMES[token]
    if token.isdigit():
        return _int(token, 0, 255)
    raise ValueError(f"unknown protocol {token!r}")


def _state(protoinfo: dict[str, str]) -> str | None:
    if "state" in protoinfo:
        return protoinfo["state"]
    orig, reply = protoinfo.get("state_orig"), protoinfo.get("state_reply")  # -m output
    if orig is None or reply is None or orig == reply:
        return orig or reply
    return f"{orig}/{reply}"


def parse_entry(line: str) -> ConnEntry | None:
    """Parse one ``dpctl/dump-conntrack`` line (plain, ``-m`` or ``-s``); None if it is not one."""
    text = line.strip()
    if not text:
        return None
    try:
        proto_token, _, rest = text.partition(",")
        protocol = _protocol(proto_token)
        fields = _key_values(rest)
        orig = _group(fields["orig"])
        _group(fields["reply"])  # must be there and well-formed; the orig tuple says it all
        src = ipaddress.ip_address(orig["src"])
        dst = ipaddress.ip_address(orig["dst"])
        if src.version != dst.version:
            raise ValueError("mixed address families")
        sport = dport = 0
        icmp_type = icmp_code = icmp_id = None
        if protocol in (IPPROTO_ICMP, IPPROTO_ICMPV6):
            icmp_id = _int(orig["id"], 0, 0xFFFF)
            icmp_type = _int(orig["type"], 0, 255) if "type" in orig else None
            icmp_code = _int(orig["code"], 0, 255) if "code" in orig else None
        else:
            sport = _int(orig.get("sport", "0"), 0, 0xFFFF)
            dport = _int(orig.get("dport", "0"), 0, 0xFFFF)
        protoinfo = _group(fields["protoinfo"]) if "protoinfo" in fields else {}
        return ConnEntry(
            protocol=protocol,
            src=src,
            dst=dst,
            sport=sport,
            dport=dport,
            icmp_type=icmp_type,
            icmp_code=icmp_code,
            icmp_id=icmp_id,
            zone=_int(fields.get("zone", "0"), 0, MAX_ZONE),
            mark=_int(fields.get("mark", "0"), 0, MAX_LIMIT),
            labels=int(fields.get("labels", "0"), 16),
            state=_state(protoinfo),
            line=text,
        )
    except (KeyError, ValueError):
        return None


def parse_dump_lines(text: str) -> tuple[list[ConnEntry], list[str]]:
    """Entries of a ``dpctl/dump-conntrack`` output, plus the non-empty lines that were not entries."""
    entries: list[ConnEntry] = []
    skipped: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        entry = parse_entry(line)
        if entry is None:
            skipped.append(line)
        else:
            entries.append(entry)
    return entries, skipped


def parse_dump(text: str) -> list[ConnEntry]:
    """Entries of a ``dpctl/dump-conntrack`` output; lines that are not entries are skipped."""
    return parse_dump_lines(text)[0]


# --------------------------------------------------------------------------- revocation (pure)


OwnAddress = IPNetwork | IPAddress


def _is_own(address: IPAddress, own: Iterable[OwnAddress]) -> bool:
    for item in own:
        if item.version != address.version:
            continue
        if isinstance(item, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            if address in item:
                return True
        elif address == item:
            return True
    return False


def connection_direction(entry: ConnEntry, own_addresses: Iterable[OwnAddress]) -> Direction:
    """EGRESS if the guest opened the connection (its original source is one of the guest's own
    addresses, or unspecified: a client without an address yet, e.g. DHCP), else INGRESS."""
    if entry.src.is_unspecified or _is_own(entry.src, own_addresses):
        return Direction.EGRESS
    return Direction.INGRESS


def connection_packet(entry: ConnEntry, direction: Direction) -> Packet:
    """The packet that opened ``entry``, as the policy sees it, with ``ct_state`` NEW."""
    ports = entry.protocol in PORT_PROTOCOLS
    icmp_type = icmp_code = 0
    if entry.is_icmp:
        default_type = ICMP_ECHO_REQUEST if entry.protocol == IPPROTO_ICMP else ICMPV6_ECHO_REQUEST
        icmp_type = entry.icmp_type if entry.icmp_type is not None else default_type
        icmp_code = entry.icmp_code or 0
    return Packet(
        direction=direction,
        protocol=entry.protocol,
        src_ip=entry.src,
        dst_ip=entry.dst,
        src_port=entry.sport if ports else 0,
        dst_port=entry.dport if ports else 0,
        icmp_type=icmp_type,
        icmp_code=icmp_code,
        ct_state=CtState.NEW,
    )


def revoked(
    entries: Iterable[ConnEntry], scope: Scope, own_addresses: Iterable[OwnAddress] | None = None
) -> list[ConnEntry]:
    """The entries ``scope`` no longer allows, in input order.

    Each connection's first packet (direction by :func:`connection_direction` against
    ``own_addresses``, by default ``scope.addresses``) is evaluated as NEW with the reference
    evaluator; a connection whose first packet would be denied is revoked.
    """
    own = tuple(scope.addresses if own_addresses is None else own_addresses)
    result = []
    for entry in entries:
        packet = connection_packet(entry, connection_direction(entry, own))
        if not evaluate(scope, packet).allowed:
            result.append(entry)
    return result


# --------------------------------------------------------------------------- flush tuples, limits


def flush_tuple(entry: ConnEntry) -> str:
    """The ``dpctl/flush-conntrack`` tuple naming exactly ``entry`` (its original direction)."""
    if entry.version == 4:
        parts = [f"ct_nw_src={entry.src}", f"ct_nw_dst={entry.dst}"]
    else:
        parts = [f"ct_ipv6_src={entry.src}", f"ct_ipv6_dst={entry.dst}"]
    parts.append(f"ct_nw_proto={entry.protocol}")
    if entry.is_icmp:
        default_type = ICMP_ECHO_REQUEST if entry.protocol == IPPROTO_ICMP else ICMPV6_ECHO_REQUEST
        icmp_type = entry.icmp_type if entry.icmp_type is not None else default_type
        # Order matters to OVS: icmp_* are only accepted after ct_nw_proto.
        parts += [
            f"icmp_type={icmp_type}",
            f"icmp_code={entry.icmp_code or 0}",
            f"icmp_id={entry.icmp_id or 0}",
        ]
    else:
        parts += [f"ct_tp_src={entry.sport}", f"ct_tp_dst={entry.dport}"]
    return ",".join(parts)


def userspace_flush_problem(entry: ConnEntry) -> str | None:
    """Why flushing ``entry`` by tuple would abort OVS 3.1's userspace conntrack, or None if safe."""
    if entry.protocol == IPPROTO_ICMPV6:
        return "flushing an ICMPv6 entry by tuple aborts ovs-vswitchd (userspace conntrack, OVS 3.1)"
    if entry.protocol == IPPROTO_ICMP:
        icmp_type = entry.icmp_type if entry.icmp_type is not None else ICMP_ECHO_REQUEST
        if icmp_type not in _USERSPACE_FLUSHABLE_ICMP_TYPES:
            return (
                f"flushing an ICMP type {icmp_type} entry by tuple aborts ovs-vswitchd (userspace conntrack)"
            )
    return None


@dataclass(frozen=True)
class ZoneLimit:
    """A zone's connection limit (0 = unlimited) and how many connections count against it."""

    zone: int
    limit: int
    count: int


def parse_limits(text: str) -> tuple[int | None, dict[int, ZoneLimit]]:
    """Parse ``dpctl/ct-get-limits`` output: (default limit or None, zone -> ZoneLimit).

    Lines look like ``default limit=0`` and ``zone=7,limit=2,count=0``; others are skipped.
    """
    default: int | None = None
    zones: dict[int, ZoneLimit] = {}
    for raw in text.splitlines():
        line = raw.strip()
        try:
            if line.startswith("default limit="):
                default = _int(line.partition("=")[2], 0, MAX_LIMIT)
                continue
            if not line.startswith("zone="):
                continue
            fields = _key_values(line)
            zone = _int(fields["zone"], 0, MAX_ZONE)
            zones[zone] = ZoneLimit(
                zone=zone,
                limit=_int(fields["limit"], 0, MAX_LIMIT),
                count=_int(fields.get("count", "0"), 0, MAX_LIMIT),
            )
        except (KeyError, ValueError):
            continue
    return default, zones


def _check_zone(zone: int) -> int:
    if isinstance(zone, bool) or not isinstance(zone, int) or not 0 <= zone <= MAX_ZONE:
        raise ValueError(f"conntrack zone {zone!r} is outside 0..{MAX_ZONE}")
    return zone


def _check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_LIMIT:
        raise ValueError(f"conntrack limit {limit!r} is outside 0..{MAX_LIMIT}")
    return limit


# --------------------------------------------------------------------------- the control


class ConntrackError(RuntimeError):
    """An ``ovs-appctl dpctl/...`` command failed (or was refused, see the subclass)."""

    def __init__(self, message: str, *, argv: Sequence[str] = (), stderr: str = "") -> None:
        self.argv = list(argv)
        self.stderr = stderr
        super().__init__(message)


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


class ConntrackControl:
    """Conntrack of one ovs-vswitchd, through ``ovs-appctl -t VSWITCHD_CTL dpctl/...``.

    ``datapath`` names the dpif (e.g. ``netdev@ovs-netdev``) when ovs-vswitchd has several;
    ``userspace_datapath`` (default) refuses the tuple flushes that abort OVS 3.1's userspace
    conntrack (see the module docstring); pass False for the kernel datapath.
    """

    def __init__(
        self,
        vswitchd_ctl: str | os.PathLike[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        datapath: str | None = None,
        userspace_datapath: bool = True,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._ctl = os.fspath(vswitchd_ctl)
        self._timeout = timeout
        self._dp = [datapath] if datapath else []
        self._userspace = userspace_datapath

    def __repr__(self) -> str:
        return f"ConntrackControl({self._ctl!r})"

    async def _appctl(self, *args: str, missing_ok: bool = False) -> str | None:
        """Run ``ovs-appctl``; stdout, or None if ``missing_ok`` and OVS answered ENOENT."""
        argv = ["ovs-appctl", "-t", self._ctl, f"--timeout={max(1, math.ceil(self._timeout))}", *args]
        command = " ".join(args)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise ConntrackError(f"ovs-appctl {command}: cannot run: {exc}", argv=argv) from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self._timeout + 1)
        except asyncio.TimeoutError as exc:
            proc.kill()
            await proc.wait()
            raise ConntrackError(f"ovs-appctl {command} timed out after {self._timeout}s", argv=argv) from exc
        stderr = err.decode(errors="replace").strip()
        if proc.returncode != 0:
            if missing_ok and _ENOENT_TEXT in stderr:
                return None
            raise ConntrackError(
                f"ovs-appctl {command} failed ({proc.returncode}): {stderr or '(no stderr)'}",
                argv=argv,
                stderr=stderr,
            )
        return out.decode(errors="replace")

    async def _batch(self, commands: Sequence[Sequence[str]]) -> list[Reply]:
        """Many commands over one connection to the control socket (no
        process per command); a reply may carry OVS's error text."""
        try:
            return await call_many(self._ctl, commands, timeout=self._timeout)
        except UnixctlError as exc:
            raise ConntrackError(str(exc)) from exc

    async def dump(self, zone: int) -> list[ConnEntry]:
        """The entries of ``zone``."""
        out = await self._appctl("dpctl/dump-conntrack", *self._dp, f"zone={_check_zone(zone)}")
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
        out = await self._appctl(
            "dpctl/flush-conntrack",
            *self._dp,
            f"zone={_check_zone(entry.zone)}",
            flush_tuple(entry),
            missing_ok=True,
        )
        return out is not None

    async def flush_zone(self, zone: int) -> None:
        """Remove every entry of ``zone``."""
        await self._appctl("dpctl/flush-conntrack", *self._dp, f"zone={_check_zone(zone)}")

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
        await self._appctl(
            "dpctl/ct-set-limits", *self._dp, f"zone={_check_zone(zone)},limit={_check_limit(limit)}"
        )

    async def set_zone_limits(self, zones: Iterable[int], limit: int, *, per_call: int = 200) -> None:
        """Allow at most ``limit`` connections in each of ``zones``; one
        ovs-appctl call per ``per_call`` zones (it takes many)."""
        wanted = sorted({_check_zone(zone) for zone in zones})
        for i in range(0, len(wanted), per_call):
            args = [f"zone={zone},limit={_check_limit(limit)}" for zone in wanted[i : i + per_call]]
            await self._appctl("dpctl/ct-set-limits", *self._dp, *args)

    async def enable_fragment_reassembly(self) -> None:
        """Let the userspace datapath's conntrack reassemble IPv4 and IPv6
        fragments (off by default there: every fragment would be invalid).
        The kernel datapath always reassembles before conntrack."""
        if self._userspace:
            for family in ("v4", "v6"):
                await self._appctl("dpctl/ipf-set-enabled", *self._dp, family)

    async def set_default_zone_limit(self, limit: int) -> None:
        """The limit of zones without their own (0 = unlimited)."""
        await self._appctl("dpctl/ct-set-limits", *self._dp, f"default={_check_limit(limit)}")

    async def zone_limit_status(self, zones: Iterable[int] = ()) -> dict[int, ZoneLimit]:
        """Limit and count of ``zones`` (zones without their own limit report the default), or
        of every zone with its own limit if ``zones`` is empty."""
        wanted = sorted({_check_zone(zone) for zone in zones})
        args = [f"zone={','.join(str(zone) for zone in wanted)}"] if wanted else []
        out = await self._appctl("dpctl/ct-get-limits", *self._dp, *args)
        assert out is not None
        _, limits = parse_limits(out)
        return limits

    async def get_zone_limits(self, zones: Iterable[int] = ()) -> dict[int, int]:
        """zone -> limit (0 = unlimited) for ``zones``, or for every zone with its own limit."""
        return {zone: status.limit for zone, status in (await self.zone_limit_status(zones)).items()}

    async def delete_zone_limit(self, zone: int) -> None:
        """Remove ``zone``'s own limit (it falls back to the default limit)."""
        await self._appctl("dpctl/ct-del-limits", *self._dp, f"zone={_check_zone(zone)}")
