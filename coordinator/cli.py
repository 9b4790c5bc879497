"""Command line: serve, check, certs, dev."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from coordinator import __version__


def _cmd_serve(args: argparse.Namespace) -> int:
    from coordinator.api.server import ServerSetupError
    from coordinator.certs import CertError
    from coordinator.config import ConfigError, load_config
    from coordinator.daemon import run_daemon
    from coordinator.eswitch.base import EswitchError
    from coordinator.logs import setup_logging
    from coordinator.ovs.ovsdb import OvsdbError
    from coordinator.security_log import SecurityLogError
    from coordinator.store.db import StoreError

    setup_logging(args.log_level)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"bluefield-coordinator: config error: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run_daemon(config))
    except (ServerSetupError, CertError, EswitchError, OvsdbError, StoreError, SecurityLogError) as exc:
        print(f"bluefield-coordinator: cannot start: {exc}", file=sys.stderr)
        return 1


def _cmd_gateway(args: argparse.Namespace) -> int:
    import grpc

    from coordinator.certs import CertError, check_private_key_file
    from coordinator.config import ConfigError
    from coordinator.gateway.config import load_gateway_config
    from coordinator.gateway.reference import ReferenceGateway, serve_gateway
    from coordinator.logs import setup_logging

    setup_logging(args.log_level)
    try:
        config = load_gateway_config(args.config)
        server = config.gateway
        check_private_key_file(Path(server.key))
        credentials = grpc.ssl_server_credentials(
            [(Path(server.key).read_bytes(), Path(server.cert).read_bytes())],
            root_certificates=Path(server.client_ca).read_bytes(),
            require_client_auth=True,
        )
    except (ConfigError, CertError, OSError) as exc:
        print(f"bluefield-coordinator gateway: {exc}", file=sys.stderr)
        return 2
    if not args.policies.is_dir():
        print(
            f"bluefield-coordinator gateway: --policies {args.policies} is not a directory", file=sys.stderr
        )
        return 2
    gateway = ReferenceGateway(
        args.policies, config.allow, queue_size=server.queue_size, legacy_resync=server.legacy_resync
    )
    asyncio.run(
        serve_gateway(gateway, server.listen, credentials, poll_interval_s=server.poll_interval_ms / 1000)
    )
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from coordinator.config import ConfigError, config_to_mapping, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"bluefield-coordinator: config error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(config_to_mapping(config), indent=2))
    from coordinator.trust.config_files import check_trust_files

    # On stderr: stdout stays the effective config as JSON.
    trust = check_trust_files(config)
    for item in trust:
        print(f"trust {item.status:<4} {item.name}: {item.detail}", file=sys.stderr)
    trust_ok = all(item.status != "FAIL" for item in trust)
    if not args.health:
        return 0 if trust_ok else 1
    from coordinator.daemon import health_report

    checks = asyncio.run(health_report(config))
    print("\nhealth checks:")
    for check in checks:
        mark = "ok  " if check.ok else ("FAIL" if check.required else "warn")
        print(f"  {mark} {check.name}{'' if check.required else ' (optional)'}: {check.detail}")
    return 0 if trust_ok and all(c.ok for c in checks if c.required) else 1


def _cmd_certs_init(args: argparse.Namespace) -> int:
    from coordinator.certs import init_dev_pki
    from coordinator.certs_lifecycle import write_empty_crl

    pki = init_dev_pki(args.out, server_names=args.server_name or ["localhost"], force=args.force)
    crl = write_empty_crl(args.out)
    print(f"development PKI in {args.out}:")
    for name, value in vars(pki).items():
        print(f"  {name}: {value}")
    print(f"  crl: {crl}")
    return 0


def _cmd_certs_lifecycle(args: argparse.Namespace) -> int:
    from coordinator import certs_lifecycle
    from coordinator.certs import DEFAULT_TRUST_DOMAIN, CertError, spiffe_id

    try:
        if args.certs_command == "issue":
            uri = args.identity or spiffe_id(DEFAULT_TRUST_DOMAIN, _default_path(args.role, args.name))
            issued = certs_lifecycle.issue(
                args.out, args.name, args.role, uri=uri, dns=args.dns or (), ips=args.ip or (),
                ca=args.ca, days=args.days, overwrite=args.renew,
            )  # fmt: skip
            print(f"{issued.cert} (serial {issued.serial:x}, {uri}), key {issued.key}")
        elif args.certs_command == "revoke":
            serial, issuer = certs_lifecycle.revoke(args.out, args.cert)
            print(f"revoked serial {serial:x} of {issuer} in {args.out / certs_lifecycle.CRL}")
        elif args.finish:
            print(f"rotation finished: {certs_lifecycle.finish_rotation(args.out)} holds only the new CA")
        else:
            new = certs_lifecycle.rotate_ca(args.out)
            print(f"new CA {new} beside the old one; both are in {args.out / certs_lifecycle.BUNDLE}")
    except (CertError, ValueError) as exc:
        print(f"bluefield-coordinator certs: {exc}", file=sys.stderr)
        return 1
    return 0


def _default_path(role: str, name: str) -> str:
    # The dev PKI's identity layout: spiffe://<domain>/host/<name>, .../admin/<name>.
    return "coordinator" if role in ("server", "coordinator") else f"{role}/{name}"


def _cmd_compile(args: argparse.Namespace) -> int:
    from coordinator.flows.compiler import PortFacts, parse_mac
    from coordinator.flows.dry_run import compile_policy_file
    from coordinator.policy.validate import PolicyError

    try:
        port = PortFacts(ofport=args.ofport, mac=parse_mac(args.mac), slot=args.slot)
        lines = compile_policy_file(args.policy, port, with_bridge=args.with_bridge)
    except (PolicyError, ValueError) as exc:
        print(f"bluefield-coordinator: {args.policy}: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


def _cmd_dev(args: argparse.Namespace) -> int:
    from coordinator.dev import env

    try:
        if args.dev_command == "up":
            from coordinator.progress import Activity

            endpoint = env.dev_up(
                args.workdir, vfs=args.vfs, sfs=args.sfs, gateway=args.gateway, progress=Activity()
            )
            print(json.dumps(vars(endpoint), indent=2))
            return 0
        if args.dev_command == "exec":
            argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            if not argv:
                raise env.DevEnvError("dev exec: no command given after --")
            return env.dev_exec(args.workdir, argv, attachment_id=args.attachment, uplink=args.uplink)
        env.dev_down(args.workdir)
        return 0
    except env.DevEnvError as exc:
        print(f"bluefield-coordinator: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bluefield-coordinator", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", type=Path, required=True)
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    serve.set_defaults(func=_cmd_serve)

    check = sub.add_parser("check", help="validate a config file and print the effective config")
    check.add_argument("--config", type=Path, required=True)
    check.add_argument(
        "--health",
        action="store_true",
        help="also run the health checks against this machine's eswitch and OVS",
    )
    check.set_defaults(func=_cmd_check)

    certs = sub.add_parser("certs", help="development certificates")
    certs_sub = certs.add_subparsers(dest="certs_command", required=True)
    init = certs_sub.add_parser("init", help="issue a dev CA, server, host and admin certificates")
    init.add_argument("--out", type=Path, required=True)
    init.add_argument(
        "--server-name", action="append", help="extra DNS name for the server cert (repeatable)"
    )
    init.add_argument("--force", action="store_true", help="replace existing files")
    init.set_defaults(func=_cmd_certs_init)
    _add_certs_lifecycle(certs_sub)

    gateway = sub.add_parser(
        "gateway", help="run the reference policy gateway over a directory of YAML files"
    )
    gateway.add_argument("--policies", type=Path, required=True, help="directory of <sandbox_id>.yaml files")
    gateway.add_argument("--config", type=Path, required=True)
    gateway.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    gateway.set_defaults(func=_cmd_gateway)

    comp = sub.add_parser("compile", help="print the flows a policy file compiles to (no switch needed)")
    comp.add_argument(
        "--policy", type=Path, required=True, help="NetworkScope as YAML/JSON (proto3 JSON mapping)"
    )
    comp.add_argument("--ofport", type=int, default=2, help="the attachment's OpenFlow port")
    comp.add_argument("--mac", default="02:00:5e:00:53:01", help="the attachment's MAC")
    comp.add_argument("--slot", type=int, default=1, help="the attachment's slot (conntrack zone, cookie)")
    comp.add_argument("--with-bridge", action="store_true", help="also print the bridge-wide flows")
    comp.set_defaults(func=_cmd_compile)

    dev = sub.add_parser("dev", help="the embedded default: everything on one box (root)")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True)
    up = dev_sub.add_parser("up", help="start (or restart what is not running)")
    up.add_argument("--workdir", type=Path, required=True)
    up.add_argument("--vfs", type=int, default=4)
    up.add_argument("--sfs", type=int, default=4)
    up.add_argument("--gateway", action="store_true", help="also run the reference policy gateway")
    ex = dev_sub.add_parser("exec", help="run a command in a guest or the uplink namespace")
    ex.add_argument("--workdir", type=Path, required=True)
    where = ex.add_mutually_exclusive_group(required=True)
    where.add_argument("--attachment", default="")
    where.add_argument("--uplink", action="store_true")
    ex.add_argument("argv", nargs=argparse.REMAINDER)
    down = dev_sub.add_parser("down", help="stop and remove everything")
    down.add_argument("--workdir", type=Path, required=True)
    for p in (up, ex, down):
        p.set_defaults(func=_cmd_dev)

    from coordinator.ctl.parser import add_ctl_parser

    add_ctl_parser(sub)
    return parser


def _add_certs_lifecycle(certs_sub: Any) -> None:
    issue = certs_sub.add_parser("issue", help="issue (or --renew) a leaf certificate from the dev CA")
    issue.add_argument("--out", type=Path, required=True, help="the dev PKI directory")
    issue.add_argument("--name", required=True, help="file stem: writes NAME.pem and NAME.key")
    issue.add_argument("--role", required=True, choices=["host", "admin", "server", "coordinator", "gateway"])
    issue.add_argument("--identity", default="", help="SAN URI (default spiffe://bluefield.local/ROLE/NAME)")
    issue.add_argument("--dns", action="append", help="DNS SAN (repeatable)")
    issue.add_argument("--ip", action="append", help="IP SAN (repeatable)")
    issue.add_argument("--ca", default="ca", help="issuing CA file stem (ca-next during a rotation)")
    issue.add_argument("--days", type=int, default=365)
    issue.add_argument("--renew", action="store_true", help="replace NAME.pem/NAME.key in place")
    revoke = certs_sub.add_parser("revoke", help="add a certificate to its CA's CRL (ca.crl)")
    revoke.add_argument("--out", type=Path, required=True, help="the dev PKI directory")
    revoke.add_argument("--cert", type=Path, required=True, help="the certificate to revoke")
    rotate = certs_sub.add_parser("rotate-ca", help="a new CA beside the old one, both in ca.pem")
    rotate.add_argument("--out", type=Path, required=True, help="the dev PKI directory")
    rotate.add_argument("--finish", action="store_true", help="end the window: only the new CA stays")
    for p in (issue, revoke, rotate):
        p.set_defaults(func=_cmd_certs_lifecycle)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
