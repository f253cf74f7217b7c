"""The userspace delay proxy, for kernels without ``sch_netem``: it runs inside the namespace
(``python -m benchmarks.latency proxy``) and releases each reply no earlier than the delay
after its request arrived."""

from __future__ import annotations

import contextlib
import ctypes
import socket
import threading
import time
from pathlib import Path
from typing import Final

#: The proxy sleeps until this long before a reply is due, then spins (timer wake-ups on
#: this VM overshoot by 50-100 µs even with a 1 ns timer slack).
SPIN_NS: Final = 400_000
_PR_SET_TIMERSLACK: Final = 29


def _tight_timer_slack() -> None:
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)


def _wait_until(due_ns: int) -> None:
    remaining = due_ns - time.perf_counter_ns()
    if remaining > SPIN_NS:
        time.sleep((remaining - SPIN_NS) / 1e9)
    while time.perf_counter_ns() < due_ns:
        pass


def _pump(
    src: socket.socket, dst: socket.socket, last_request: list[int], delay_ns: int | None
) -> None:
    """Copy ``src`` -> ``dst``. The request direction (``delay_ns`` None) stamps each request's
    arrival; the reply direction holds each reply until that arrival + ``delay_ns``, so the
    round trip to Redis behind the proxy (and the proxy's own thread wake-ups on that leg)
    is hidden inside the delay instead of adding to it, whatever the machine's load."""
    try:
        while data := src.recv(1 << 16):
            if delay_ns is None:
                last_request[0] = time.perf_counter_ns()
            elif delay_ns:
                _wait_until(last_request[0] + delay_ns)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def run_proxy(listen: tuple[str, int], target: tuple[str, int], delay_file: Path) -> None:
    """Forward ``listen`` -> ``target``; each reply leaves no earlier than the delay (ns, read
    from ``delay_file`` when a connection is accepted) after its request arrived, as netem
    on the link would add it. Request/response traffic is sequential per connection, so no
    reply waits behind another one's delay."""
    _tight_timer_slack()
    server = socket.create_server(listen, backlog=64)
    print("ready", flush=True)
    while True:
        client, _ = server.accept()
        delay_ns = int(delay_file.read_text().strip() or 0)
        upstream = socket.create_connection(target)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        last_request = [0]
        threading.Thread(
            target=_pump, args=(client, upstream, last_request, None), daemon=True
        ).start()
        threading.Thread(
            target=_pump, args=(upstream, client, last_request, delay_ns), daemon=True
        ).start()
