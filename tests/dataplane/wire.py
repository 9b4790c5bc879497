"""Raw frames in and out of a test namespace (``python wire.py ...``).

send IFNAME: every line on stdin is one frame in hex, sent as is on IFNAME
(an AF_PACKET socket: no kernel stack, no checksum or framing fix-ups).
capture IFNAME MARKER: prints "ready", then the hex of every frame arriving
on IFNAME (not the ones this namespace sends) that contains MARKER, until
stdin closes.

Stdlib only: it runs inside namespaces with the interpreter of the test
run; the frames themselves are built and parsed by the tests with scapy.
"""

from __future__ import annotations

import select
import socket
import sys

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def send(ifname: str) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((ifname, 0))
        for line in sys.stdin:
            if line.strip():
                s.send(bytes.fromhex(line.strip()))


def capture(ifname: str, marker: bytes) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)  # bursts of large fragments
        s.bind((ifname, 0))
        print("ready", flush=True)
        while True:
            ready, _, _ = select.select([s, sys.stdin], [], [])
            if s in ready:
                frame, address = s.recvfrom(65535)
                if address[2] != PACKET_OUTGOING and marker in frame:
                    print(frame.hex(), flush=True)
            if sys.stdin in ready and not sys.stdin.readline():
                return


def main() -> int:
    if sys.argv[1] == "send":
        send(sys.argv[2])
    else:
        capture(sys.argv[2], sys.argv[3].encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
