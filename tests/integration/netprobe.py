"""Tiny traffic tools run inside test namespaces (``python netprobe.py ...``).

serve: TCP listeners that accept and echo, UDP sockets that echo, on the
given ports and any address. connect/udp: one probe, exit 0 on success.
hold: open a TCP connection and report, line by line on stdout, whether a
round trip still works each time a line arrives on stdin.
prober: a new TCP connection (with a round trip) every --interval seconds
until stdin closes; one line per attempt: its start (CLOCK_MONOTONIC,
shared by every namespace) and "ok" or "fail".
burst: --count TCP connections one after another (each leaves a conntrack
entry behind); prints how many succeeded.
"""

from __future__ import annotations

import argparse
import select
import socket
import sys
import threading
import time
from collections.abc import Callable


def _echo_tcp(conn: socket.socket) -> None:
    with conn:
        while True:
            try:
                data = conn.recv(4096)
            except OSError:
                return
            if not data:
                return
            conn.sendall(data)


def _serve_tcp(family: int, port: int) -> None:
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    srv.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    srv.listen(64)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=_echo_tcp, args=(conn,), daemon=True).start()


def _serve_udp(address: str, port: int) -> None:
    # Bound to one address: a wildcard socket would answer from whatever
    # source the route picks, which conntrack rightly sees as a new flow.
    srv = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind((address, port))
    while True:
        data, peer = srv.recvfrom(4096)
        srv.sendto(data, peer)


def serve(tcp: list[int], udp: list[int], udp_addresses: list[str]) -> None:
    for family in (socket.AF_INET, socket.AF_INET6):
        for port in tcp:
            threading.Thread(target=_serve_tcp, args=(family, port), daemon=True).start()
    for address in udp_addresses:
        for port in udp:
            threading.Thread(target=_serve_udp, args=(address, port), daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()  # run until the test closes stdin


def connect(host: str, port: int, timeout: float, source: str | None) -> bool:
    try:
        with socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        ) as s:
            s.sendall(b"ping")
            return s.recv(4) == b"ping"
    except OSError:
        return False


def udp(host: str, port: int, timeout: float) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(b"ping", (host, port))
            return s.recv(4) == b"ping"
        except OSError:
            return False


def blast(host: str, port: int, count: int, size: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        for _ in range(count):
            s.sendto(b"x" * size, (host, port))


def arp_request(ifname: str, sender_ip: str, target_ip: str) -> None:
    """Broadcast one ARP who-has for ``target_ip`` claiming ``sender_ip``
    (which need not be ours: that is the point)."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((ifname, 0))
        mac = s.getsockname()[4]
        frame = b"\xff" * 6 + mac + b"\x08\x06"
        frame += b"\x00\x01\x08\x00\x06\x04\x00\x01" + mac + socket.inet_aton(sender_ip)
        frame += b"\x00" * 6 + socket.inet_aton(target_ip)
        s.send(frame)


def hold(host: str, port: int, timeout: float) -> None:
    s = socket.create_connection((host, port), timeout=timeout)
    print("connected", flush=True)
    for _ in sys.stdin:
        try:
            s.sendall(b"ping")
            ready, _, _ = select.select([s], [], [], timeout)
            ok = bool(ready) and s.recv(4) == b"ping"
        except OSError:
            ok = False
        print("ok" if ok else "fail", flush=True)


def prober(host: str, port: int, timeout: float, interval: float) -> None:
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    while not stop.is_set():
        began = time.monotonic()
        ok = connect(host, port, timeout, None)
        print(f"{began:.6f} {'ok' if ok else 'fail'}", flush=True)
        stop.wait(max(0.0, interval - (time.monotonic() - began)))


def burst(host: str, port: int, count: int, timeout: float) -> None:
    print(sum(connect(host, port, timeout, None) for _ in range(count)), flush=True)


def sniff_arp(ifname: str, seconds: float) -> None:
    """Count the ARP frames ``ifname`` receives for ``seconds``: "ready"
    once listening, then the count."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806)) as s:
        s.bind((ifname, 0x0806))
        print("ready", flush=True)
        end = time.monotonic() + seconds
        seen = 0
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([s], [], [], left)
            if ready:
                s.recv(2048)
                seen += 1
        print(seen, flush=True)


def syn_flood(host: str, port: int, seconds: float) -> None:
    """Open connections to ``host``:``port`` as fast as the kernel sends
    SYNs, without waiting for any, for ``seconds``; each from its own
    source port (the oldest sockets are closed to stay within the fd limit)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    end = time.monotonic() + seconds
    opened: list[socket.socket] = []
    while time.monotonic() < end:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex((host, port))
        opened.append(s)
        if len(opened) > 400:
            for old in opened[:200]:
                old.close()
            del opened[:200]
        time.sleep(0.0002)
    for s in opened:
        s.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve")
    p.add_argument("--tcp", default="")
    p.add_argument("--udp", default="")
    p.add_argument("--udp-addresses", default="", help="addresses the UDP echo binds to")
    p = sub.add_parser("blast")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--count", type=int, default=500)
    p.add_argument("--size", type=int, default=1200)
    p = sub.add_parser("arp-request")
    p.add_argument("ifname")
    p.add_argument("sender_ip")
    p.add_argument("target_ip")
    p = sub.add_parser("sniff-arp")
    p.add_argument("ifname")
    p.add_argument("--seconds", type=float, default=1.0)
    p = sub.add_parser("syn-flood")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--seconds", type=float, default=1.0)
    for name in ("connect", "udp", "hold", "prober", "burst"):
        p = sub.add_parser(name)
        p.add_argument("host")
        p.add_argument("port", type=int)
        p.add_argument("--timeout", type=float, default=1.0)
        if name == "connect":
            p.add_argument("--source")
        if name == "prober":
            p.add_argument("--interval", type=float, default=0.05)
        if name == "burst":
            p.add_argument("--count", type=int, default=100)
    args = parser.parse_args()
    ports = lambda text: [int(x) for x in text.split(",") if x]  # noqa: E731
    # The probes that answer yes or no exit 0 or 1; the others always 0.
    judged: dict[str, Callable[[], bool]] = {
        "connect": lambda: connect(args.host, args.port, args.timeout, args.source),
        "udp": lambda: udp(args.host, args.port, args.timeout),
    }
    if args.cmd in judged:
        return 0 if judged[args.cmd]() else 1
    actions: dict[str, Callable[[], None]] = {
        "serve": lambda: serve(
            ports(args.tcp), ports(args.udp), [a for a in args.udp_addresses.split(",") if a]
        ),
        "arp-request": lambda: arp_request(args.ifname, args.sender_ip, args.target_ip),
        "blast": lambda: blast(args.host, args.port, args.count, args.size),
        "prober": lambda: prober(args.host, args.port, args.timeout, args.interval),
        "burst": lambda: burst(args.host, args.port, args.count, args.timeout),
        "sniff-arp": lambda: sniff_arp(args.ifname, args.seconds),
        "syn-flood": lambda: syn_flood(args.host, args.port, args.seconds),
        "hold": lambda: hold(args.host, args.port, args.timeout),
    }
    actions[args.cmd]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
