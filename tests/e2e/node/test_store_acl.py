"""Issue 19: in a real injected Pod, the app's own processes can read the store, not change it.

The commands run inside the app container of an injected Job, as the app's UID with the
socket's group, exactly as any app code (or a debug shell, or a library that flushes on start)
would: over ``$SIDECAR_STATE_REDIS_URL``, without credentials.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from tests.e2e.node.conftest import NodeCluster
from tests.e2e.node.support import bind, flag_binding, flag_topic, run_job

#: The demo image's user (images/build.py APP_USER), the socket's group (InjectionDefaults).
APP_UID = 65532
SOCKET_GROUP = 7379

ATTEMPTS = """
import json, os, sys
sys.path.insert(0, '/opt/demo')
from app import Redis, RedisError
redis = Redis(os.environ['SIDECAR_STATE_REDIS_URL'])
def attempt(*args):
    try:
        return {'ok': redis.command(*args)}
    except RedisError as error:
        return {'error': str(error)}
out = {
    'uid': os.getuid(),
    'groups': sorted({os.getgid(), *os.getgroups()}),
    'sees_credentials': os.path.exists('/var/run/sidecar-state-credentials'),
}
for name, args in [
    ('GET', ('GET', 'flag:new-ui-layout')),
    ('MGET', ('MGET', 'flag:new-ui-layout', 'flag:absent')),
    ('META', ('HGETALL', 'sidecar-state:meta')),
    ('SET', ('SET', 'flag:new-ui-layout', 'false')),
    ('DEL', ('DEL', 'flag:new-ui-layout')),
    ('FLUSHALL', ('FLUSHALL',)),
    ('GET_AFTER', ('GET', 'flag:new-ui-layout')),
    ('META_AFTER', ('HGETALL', 'sidecar-state:meta')),
]:
    out[name] = attempt(*args)
print('RESULT ' + json.dumps(out))
"""


def _run_as_the_app(node_cluster: NodeCluster, namespace: str) -> dict[str, Any]:
    logs = run_job(node_cluster.cluster, "poke", namespace, ATTEMPTS)
    line = next((x for x in logs.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, logs
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    return result


def test_the_app_can_read_its_store_but_not_write_or_flush_it(
    node_cluster: NodeCluster, namespace: str
) -> None:
    topic = flag_topic(node_cluster.broker, namespace)
    bind(node_cluster.cluster, flag_binding("poke", namespace, topic=topic))

    result = _run_as_the_app(node_cluster, namespace)
    print(f"\n[node] as the app: {json.dumps(result)}", file=sys.stderr)

    # Who ran it: the app's UID, in the socket's group (so connect() works), and the
    # hydrator's password is not even in its filesystem.
    assert result["uid"] == APP_UID
    assert SOCKET_GROUP in result["groups"]
    assert result["sees_credentials"] is False
    # What it may do: read.
    assert result["GET"] == {"ok": "true"}
    assert result["MGET"] == {"ok": ["true", None]}
    meta = dict(zip(result["META"]["ok"][::2], result["META"]["ok"][1::2], strict=True))
    assert meta["hydrated"] == "1", meta
    # What it may not: change the view.
    for refused in ("SET", "DEL", "FLUSHALL"):
        assert "error" in result[refused], (refused, result[refused])
        assert result[refused]["error"].startswith("NOPERM"), (refused, result[refused])
    # And so nothing changed.
    assert result["GET_AFTER"] == {"ok": "true"}
    assert result["META_AFTER"]["ok"], result["META_AFTER"]
