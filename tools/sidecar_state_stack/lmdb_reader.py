"""An app process reading an LMDB view with :mod:`sidecar_state_client`, driven over stdin.

LMDB forbids opening one environment twice in a process, and the test's hydrator has it open:
the app's reads therefore run here, in a process of their own, as they do in a Pod. One JSON
request per line on stdin, one JSON answer per line on stdout:

- ``{"op": "get_many", "keys": [...]}`` -> ``{"values": [str | null, ...]}``
- ``{"op": "meta"}`` -> ``{"meta": {...}}``
- ``{"op": "watch", "keys": [...]}``: read ``keys`` in one read transaction, over and over,
  until the next line arrives on stdin; then -> ``{"snapshots": n, "distinct": [...]}``, the
  distinct snapshots seen (each a list of values), at most ``MAX_DISTINCT`` of them.
- ``{"op": "probe_files"}`` -> what this process may do with the served environment's files.

Values travel as latin-1 text. Run: ``python -m sidecar_state_stack.lmdb_reader PATH``; it depends
on nothing but the client and ``lmdb``, so it also runs under another UID with a bare
interpreter (see :func:`reader_command`).
"""

from __future__ import annotations

import json
import os
import select
import sys
from pathlib import Path
from typing import Any

MAX_DISTINCT = 50


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _probe(root: Path) -> dict[str, Any]:
    current = root / "current"
    out: dict[str, Any] = {"uid": os.getuid(), "groups": sorted({os.getgid(), *os.getgroups()})}
    for name in ("data.mdb", "lock.mdb"):
        try:
            with open(current / name, "r+b"):
                out[name] = "writable"
        except PermissionError:
            out[name] = "read-only" if os.access(current / name, os.R_OK) else "no access"
    return out


def main(argv: list[str]) -> int:
    from sidecar_state_client import LmdbReader

    root = Path(argv[0])
    reader = LmdbReader(root, wait_seconds=30)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        if op == "get_many":
            keys = [k.encode("latin-1") for k in request["keys"]]
            answer: dict[str, Any] = {"values": [_text(v) for v in reader.get_many(keys)]}
        elif op == "meta":
            answer = {"meta": reader.meta()}
        elif op == "watch":
            keys = [k.encode("latin-1") for k in request["keys"]]
            distinct: list[list[str | None]] = []
            seen: set[tuple[bytes | None, ...]] = set()
            snapshots = 0
            while True:
                values = tuple(reader.get_many(keys))
                snapshots += 1
                if values not in seen and len(seen) < MAX_DISTINCT:
                    seen.add(values)
                    distinct.append([_text(v) for v in values])
                if snapshots % 20 == 0 and select.select([sys.stdin], [], [], 0)[0]:
                    sys.stdin.readline()
                    break
            answer = {"snapshots": snapshots, "distinct": distinct}
        elif op == "probe_files":
            answer = _probe(root)
        else:
            answer = {"error": f"unknown op {op!r}"}
        print(json.dumps(answer), flush=True)
    reader.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
