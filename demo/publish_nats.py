"""The demo's NATS side: a nats-server for ``make demo SOURCE=nats``, and flag puts to its KV
bucket: ``python -m demo.publish_nats new-ui-layout true --server nats://IP:PORT``.

Why a script rather than the ``nats`` CLI: the machines have no NATS CLI, and the value is the
contract of the demo's StateBinding (``format: json``, key from ``id``, value from
``enabled``, Redis key ``flag:<id>``), as for Kafka (:mod:`demo.publish`). The server URL comes
from ``--server`` or ``$SIDECAR_STATE_DEMO_NATS`` (``make demo SOURCE=nats`` prints it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import nats
import nats.js.errors

from demo.publish import flag_record

BUCKET = "feature-flags"


def start_server(host: str, directory: Path) -> tuple[int, str]:
    """A nats-server with JetStream (on disk in ``directory``) on ``host``, in its own session
    so it outlives ``demo.run up``; returns (pid, URL)."""
    from localkube.ports import free_port
    from sidecar_state_stack.nats_server import install_nats_server

    binary = install_nats_server()
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port(host)
    conf = directory / "nats.conf"
    conf.write_text(
        f"listen: {host}:{port}\njetstream {{ store_dir: {str(directory / 'js')!r} }}\n"
    )
    with (directory / "nats-server.log").open("wb") as log:
        proc = subprocess.Popen(
            [str(binary), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with socket.create_connection((host, port), timeout=1) as conn:
                if conn.recv(4).startswith(b"INFO"):
                    return proc.pid, f"nats://{host}:{port}"
        except OSError:
            time.sleep(0.1)
    tail = (directory / "nats-server.log").read_text(errors="replace")[-3000:]
    raise RuntimeError(f"nats-server did not start:\n{tail}")


async def _put(server: str, flag: str, enabled: bool, bucket: str) -> float:
    nc = await nats.connect(server)
    try:
        js = nc.jetstream()
        try:
            kv = await js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            kv = await js.create_key_value(bucket=bucket, history=5)
        await kv.put(flag, flag_record(flag, enabled))
        return time.time()
    finally:
        await nc.close()


def put(server: str, flag: str, enabled: bool, *, bucket: str = BUCKET) -> float:
    """Put one flag into the bucket (created if missing); return the time the put was acked."""
    return asyncio.run(_put(server, flag, enabled, bucket))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.publish_nats", description=__doc__)
    parser.add_argument("flag", help="flag id, e.g. new-ui-layout")
    parser.add_argument("value", choices=["true", "false"])
    parser.add_argument("--server", default=os.environ.get("SIDECAR_STATE_DEMO_NATS"))
    parser.add_argument("--bucket", default=BUCKET)
    args = parser.parse_args(argv)
    if not args.server:
        parser.error("give --server nats://HOST:PORT or set SIDECAR_STATE_DEMO_NATS")
    acked = put(args.server, args.flag, args.value == "true", bucket=args.bucket)
    print(f"put {args.flag}={args.value} into KV bucket {args.bucket} (acked {acked:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
