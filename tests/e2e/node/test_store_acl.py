"""Issue 19: in a real injected Pod, the app's own processes can read the store, not change it.

The commands run inside the app container of an injected Job, as the app's UID with the
socket's group, exactly as any app code (or a debug shell, or a library that flushes on start)
would: over ``$SIDECAR_STATE_REDIS_URL``, without credentials.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from demo.publish import publish
from sidecar_state_stack.objects import wait_reconciled
from tests.e2e.node.conftest import NodeCluster
from tests.e2e.node.support import app_container, flag_binding

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
    cluster = node_cluster.cluster
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "poke", "namespace": namespace},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"app": "poke"}},
                "spec": {
                    "restartPolicy": "Never",
                    "dnsPolicy": "Default",
                    "containers": [app_container(["python3", "-c", ATTEMPTS])],
                },
            },
        },
    }
    cluster.apply(job)
    cluster.kubectl_run(
        "wait", "--for=condition=Complete", "job/poke", "-n", namespace, "--timeout=120s",
        timeout=130,
    )  # fmt: skip
    logs = cluster.kubectl_run("logs", "job/poke", "-n", namespace, "-c", "app").stdout
    line = next((x for x in logs.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, logs
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    return result


def test_the_app_can_read_its_store_but_not_write_or_flush_it(
    node_cluster: NodeCluster, namespace: str
) -> None:
    cluster, broker = node_cluster.cluster, node_cluster.broker
    topic = f"flags-{namespace}"
    broker.create_topic(topic)
    publish(broker.bootstrap_servers, "new-ui-layout", True, topic=topic)
    cluster.apply(flag_binding("poke", namespace, topic=topic))
    wait_reconciled(cluster, "poke", namespace)

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
