"""The daemon's configuration: typed, with every default in this one file.

A TOML file maps onto the dataclasses below section by section. An unknown
key, a wrong type or an out-of-range value fails startup with the key's
dotted name (``eswitch.emulated.vfs: expected an integer``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from coordinator.attachment_identity import MAX_SLOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on the 3.10 BlueField images
    import tomli as tomllib


class ConfigError(ValueError):
    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}" if key else reason)
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class ServerConfig:
    # host:port of the mTLS gRPC listener.
    listen: str = "127.0.0.1:8443"
    # Server certificate and key, and the CA bundle client certificates must chain to.
    cert: str = "/etc/bluefield-coordinator/tls/server.pem"
    key: str = "/etc/bluefield-coordinator/tls/server.key"
    client_ca: str = "/etc/bluefield-coordinator/tls/ca.pem"
    # CRL files (PEM, several CRLs per file allowed, or DER); with any, every
    # CA of client_ca needs its CRL. () = no revocation checking.
    crl: tuple[str, ...] = ()
    # Seconds between checks of cert, key, client_ca and crl for changes
    # (also at once on SIGHUP); a changed set is validated, then swapped in.
    reload_interval_s: float = 30.0
    # When a CRL in force passes its next_update with no newer one:
    # fail-closed refuses every client of that CA until a fresh CRL is in
    # place; keep-last keeps checking against the old one.
    crl_after_next_update: Literal["fail-closed", "keep-last"] = "fail-closed"
    # Seconds in-flight RPCs get to finish on SIGTERM.
    shutdown_grace_s: float = 5.0
    # Client connections open at once (more are closed at accept). Each one
    # that has not acknowledged the listener's HTTP/2 settings can make the
    # daemon hold up to 170 MB of headers (README, "Limits of the API
    # listener"), so this bounds what floods on open connections hold.
    # The host extension keeps one connection; each ctl command opens one.
    max_connections: int = 4
    # Seconds a connection may stay open before its first authorized call
    # (a TLS handshake, a certificate with a role): silent sockets, failed
    # handshakes and connections that only call the standard health service
    # are closed then, and until then any newcomer may take their place.
    unproven_timeout_s: float = 10.0


@dataclass(frozen=True)
class AuthConfig:
    # Client identities (certificate SAN URI, else DNS name) per role.
    admins: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class StoreConfig:
    path: str = "/var/lib/bluefield-coordinator/state.db"
    # Events kept for resumable WatchAttachmentEvents.
    event_log_size: int = 10000


@dataclass(frozen=True)
class OvsConfig:
    # OVSDB endpoint (unix:PATH or tcp:HOST:PORT).
    db: str = "unix:/var/run/openvswitch/db.sock"
    # Directory holding BRIDGE.mgmt and ovs-vswitchd's control socket.
    rundir: str = "/var/run/openvswitch"
    bridge: str = "br-dpu"
    datapath_type: Literal["system", "netdev"] = "system"
    # Port that leads to the fabric; added to the bridge if missing.
    uplink: str = "p0"
    # ovs-vswitchd's control socket (traces, conntrack); "" = found in rundir.
    vswitchd_ctl: str = ""
    # Seconds an OVSDB transaction or ovs-ofctl call may take.
    timeout_s: float = 10.0
    # How often the switch is checked for having lost our flows (ovs-vswitchd
    # restarted) or being unreachable; it is then re-programmed.
    watch_interval_ms: int = 1000


@dataclass(frozen=True)
class EmulatedConfig:
    vfs: int = 4
    sfs: int = 4
    pf: int = 0
    # Namespace the representor ends live in (where ovs-vswitchd runs); "" = the daemon's own.
    switch_netns: str = ""
    # Guest namespaces are named PREFIX + representor name.
    guest_netns_prefix: str = "bfc-"


@dataclass(frozen=True)
class SwitchdevConfig:
    """A real BlueField eswitch (coordinator/eswitch/switchdev.py documents each key)."""

    pci_address: str = "0000:03:00.0"
    pf: int = 0
    host_controller: int = 1
    sysfs_root: str = "/sys"
    min_firmware_version: str = ""
    firmware_required: bool = False
    sf_number_start: int = 1000
    sf_number_end: int = 1015
    representor_timeout_s: float = 10.0
    representor_poll_s: float = 0.05
    rename_grace_s: float = 1.0
    host_pf_pci_address: str = ""
    host_vf_offset: int = 1
    host_vf_stride: int = 1
    # The devlink CLI (iproute2) and how long one call may take.
    devlink_command: tuple[str, ...] = ("devlink",)
    devlink_timeout_s: float = 10.0


@dataclass(frozen=True)
class EswitchConfig:
    backend: Literal["emulated", "switchdev"] = "emulated"
    # Makes assigned MACs unique across DPUs on one fabric; "" = /etc/machine-id.
    mac_salt: str = ""
    # Seconds between re-reads of the device inventory (VFs come and go with
    # the host); the fallback where no udev events arrive.
    inventory_poll_s: float = 10.0
    # Also re-read on udev net events (switchdev backend, where udevd runs).
    inventory_udev: bool = True
    emulated: EmulatedConfig = field(default_factory=EmulatedConfig)
    switchdev: SwitchdevConfig = field(default_factory=SwitchdevConfig)


@dataclass(frozen=True)
class PolicyConfig:
    # What Attach enforces before answering: WAIT_INITIAL (the gateway's
    # policy), BASELINE (network_class_defaults, replaced when the policy
    # arrives); "auto" = WAIT_INITIAL when a gateway is configured.
    initial_policy: Literal["auto", "WAIT_INITIAL", "BASELINE"] = "auto"
    initial_policy_timeout_ms: int = 10000
    network_class_defaults: str = "dpu-ovs-isolated"
    # Policy is STALE once the gateway stream has been down this long.
    stale_threshold_ms: int = 30000
    # keep-last-known: keep enforcing the last good policy; deny-all: cut
    # the attachments' traffic until fresh policy arrives.
    on_stale: Literal["keep-last-known", "deny-all"] = "keep-last-known"
    # A resync (every new gateway stream) must end with the gateway's
    # SYNC_COMPLETE within this time; otherwise every attachment it has not
    # confirmed turns STALE (on_stale applies). A gateway that never sends
    # the marker is handled so.
    resync_timeout_ms: int = 10000


@dataclass(frozen=True)
class GatewayClientConfig:
    # host:port of the policy gateway; "" = no gateway (BASELINE only).
    endpoint: str = ""
    # The coordinator's own client credential and the gateway's CA.
    cert: str = ""
    key: str = ""
    ca: str = ""
    # TLS name to expect in the gateway's certificate ("" = the endpoint host).
    server_name: str = ""
    # CRL files the gateway's certificate is checked against on each
    # connection (PEM or DER; () = none).
    crl: tuple[str, ...] = ()
    # Reconnect backoff: full jitter, doubling from base up to cap.
    backoff_base_ms: int = 200
    backoff_cap_ms: int = 5000


@dataclass(frozen=True)
class LimitsConfig:
    max_attachments: int = 1024
    max_attach_qps: float = 50.0
    # Conntrack entries one attachment's zone may hold, so one guest cannot
    # exhaust the table all guests share (0 = unlimited).
    conntrack_per_attachment: int = 65536


@dataclass(frozen=True)
class ReconcileConfig:
    # What the daemon does on its own with attachments whose host identity
    # has not called Reconcile (nor Attach/Detach) within host_grace_s of a
    # start: advisory = report each as an event; authoritative = release them.
    reconcile_mode: Literal["advisory", "authoritative"] = "advisory"
    host_grace_s: float = 600.0


@dataclass(frozen=True)
class MetricsConfig:
    # host:port of the Prometheus /metrics endpoint; "" = off.
    listen: str = "127.0.0.1:9464"
    # TLS for the endpoint: cert and key together; client_ca also asks
    # scrapers for a client certificate.
    cert: str = ""
    key: str = ""
    client_ca: str = ""
    # CRL files scrapers' certificates are checked against (as server.crl;
    # needs client_ca; a CRL past its next_update is handled as
    # server.crl_after_next_update says). () = no revocation checking.
    crl: tuple[str, ...] = ()


@dataclass(frozen=True)
class HealthConfig:
    # Seconds between the background health checks that log DpuFirmwareDegraded
    # and DpuCoordinatorHealthy transitions as events.
    poll_s: float = 10.0
    # Seconds a datapath offload count (ovs-appctl dpctl/dump-flows) is reused
    # by Health, GetAttachment and /metrics before it is read again.
    offload_cache_s: float = 5.0


@dataclass(frozen=True)
class LogsConfig:
    # Security-relevant events as OCSF JSON lines appended to this file
    # (absolute path; "" = off). Reopened when rotated away.
    security_events_path: str = ""


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    ovs: OvsConfig = field(default_factory=OvsConfig)
    eswitch: EswitchConfig = field(default_factory=EswitchConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    gateway: GatewayClientConfig = field(default_factory=GatewayClientConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    logs: LogsConfig = field(default_factory=LogsConfig)
    reconcile: ReconcileConfig = field(default_factory=ReconcileConfig)
    health: HealthConfig = field(default_factory=HealthConfig)


# Range checks beyond types, by dotted key: (minimum, maximum).
_RANGES: dict[str, tuple[float, float]] = {
    "store.event_log_size": (100, 10_000_000),
    "eswitch.emulated.vfs": (0, 1024),
    "eswitch.emulated.sfs": (0, 1024),
    "eswitch.emulated.pf": (0, 7),
    "policy.initial_policy_timeout_ms": (1, 3_600_000),
    "policy.stale_threshold_ms": (100, 86_400_000),
    "policy.resync_timeout_ms": (100, 3_600_000),
    "gateway.backoff_base_ms": (10, 60_000),
    "gateway.backoff_cap_ms": (100, 600_000),
    "limits.max_attachments": (1, MAX_SLOT),  # each attachment holds a slot
    "limits.max_attach_qps": (0.1, 100_000),
    "limits.conntrack_per_attachment": (0, 10_000_000),
    "ovs.timeout_s": (0.1, 600),
    "ovs.watch_interval_ms": (50, 600_000),
    "reconcile.host_grace_s": (1, 604_800),
    "server.shutdown_grace_s": (0, 600),
    "server.reload_interval_s": (0.2, 86_400),
    "server.max_connections": (2, 1024),
    "server.unproven_timeout_s": (0.5, 300),
    "eswitch.inventory_poll_s": (0.1, 3600),
    "health.poll_s": (0.5, 3600),
    "health.offload_cache_s": (0, 600),
}


def _convert(key: str, hint: Any, value: Any) -> Any:
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _build(hint, value, key)
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise ConfigError(key, f"expected one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if origin is tuple:
        (item,) = {a for a in get_args(hint) if a is not Ellipsis}
        if not isinstance(value, list):
            raise ConfigError(key, "expected a list")
        return tuple(_convert(f"{key}[{i}]", item, v) for i, v in enumerate(value))
    if origin in (Union, types.UnionType):
        raise ConfigError(key, "unsupported union type")  # not used by Config
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, "expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, "expected an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, "expected a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, "expected a string")
        return value
    raise ConfigError(key, f"unsupported type {hint!r}")  # pragma: no cover


def _build(cls: type[Any], raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(prefix, "expected a table")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            dotted = f"{prefix}.{key}" if prefix else key
            raise ConfigError(dotted, "unknown key")
    kwargs = {}
    for name in names & raw.keys():
        dotted = f"{prefix}.{name}" if prefix else name
        value = _convert(dotted, hints[name], raw[name])
        if dotted in _RANGES:
            low, high = _RANGES[dotted]
            if not low <= value <= high:
                raise ConfigError(dotted, f"must be between {low:g} and {high:g}, got {value}")
        kwargs[name] = value
    return cls(**kwargs)


def build_section(cls: type[Any], raw: Any, prefix: str) -> Any:
    """Parse one table into dataclass ``cls`` with the same key-naming errors
    (for other programs' configs, e.g. the reference gateway's)."""
    return _build(cls, raw, prefix)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError("", f"cannot read config {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{path}: invalid TOML: {exc}") from exc


def config_from_mapping(raw: dict[str, Any]) -> Config:
    config: Config = _build(Config, raw, "")
    _check_cross_fields(config)
    return config


def _check_cross_fields(config: Config) -> None:
    host, sep, port = config.server.listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError("server.listen", f"expected HOST:PORT, got {config.server.listen!r}")
    if not config.ovs.db.startswith(("unix:", "tcp:", "ssl:")):
        raise ConfigError("ovs.db", "expected unix:PATH, tcp:HOST:PORT or ssl:HOST:PORT")
    gateway = config.gateway
    if gateway.endpoint:
        for key in ("cert", "key", "ca"):
            if not getattr(gateway, key):
                raise ConfigError(f"gateway.{key}", "required when gateway.endpoint is set")
    elif config.policy.initial_policy == "WAIT_INITIAL":
        raise ConfigError("policy.initial_policy", "WAIT_INITIAL needs gateway.endpoint")
    metrics = config.metrics
    if bool(metrics.cert) != bool(metrics.key):
        raise ConfigError("metrics.key" if metrics.cert else "metrics.cert", "cert and key go together")
    if metrics.client_ca and not metrics.cert:
        raise ConfigError("metrics.client_ca", "needs metrics.cert and metrics.key")
    if metrics.crl and not metrics.client_ca:
        raise ConfigError("metrics.crl", "needs metrics.client_ca (scrapers' certificates to check)")
    if metrics.listen and not metrics.cert and not _is_loopback(metrics.listen):
        raise ConfigError(
            "metrics.listen",
            f"{metrics.listen} is not a loopback address: plain HTTP is only allowed on loopback, "
            "set metrics.cert and metrics.key for TLS",
        )
    security_events = config.logs.security_events_path
    if security_events and not Path(security_events).is_absolute():
        raise ConfigError("logs.security_events_path", f"expected an absolute path, got {security_events!r}")
    overlap = set(config.auth.admins) & set(config.auth.hosts)
    if overlap:
        raise ConfigError("auth", f"identity in both admins and hosts: {sorted(overlap)[0]}")


def _is_loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].removeprefix("[").removesuffix("]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere


def load_config(path: Path) -> Config:
    return config_from_mapping(read_toml(path))


def config_to_mapping(config: Config) -> dict[str, Any]:
    """The effective configuration, for ``check`` to print."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value

    def walk(obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            out[f.name] = walk(value) if dataclasses.is_dataclass(value) else plain(value)
        return out

    return walk(config)
