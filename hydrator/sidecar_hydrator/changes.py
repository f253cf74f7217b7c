"""Change notifications: after each applied batch, the changed keys on a Redis channel.

For apps that keep state derived from the view (a cache of parsed rules, an index): they
``SUBSCRIBE`` over the same socket and never poll. The message is ``PUBLISH``ed inside the
batch's own ``MULTI/EXEC``, so it arrives exactly when the batch becomes visible, never before.

Channel: ``sidecar-state:changes:<binding>``. Message (JSON):
``{"binding": "<name>", "set": ["<key>", ...], "deleted": ["<key>", ...]}`` with the keys as
stored (``keys.prefix`` included), sorted. A rebuild (written into the spare database and
swapped in) publishes nothing per batch: after a Redis restart a subscriber re-reads what it
derives from, as it must anyway (its connection broke).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

CHANNEL_PREFIX = "sidecar-state:changes:"


def change_channel(binding: str) -> str:
    return CHANNEL_PREFIX + binding


def change_message(*, binding: str, sets: Iterable[bytes], deletes: Iterable[bytes]) -> bytes:
    def names(keys: Iterable[bytes]) -> list[str]:
        # Keys are UTF-8 (records with other keys are skipped as bad records).
        return sorted(key.decode("utf-8", "replace") for key in keys)

    document = {"binding": binding, "set": names(sets), "deleted": names(deletes)}
    return json.dumps(document, separators=(",", ":")).encode()
