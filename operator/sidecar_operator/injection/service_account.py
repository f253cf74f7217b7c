"""The service-account token mount the apiserver gives every container, given to ours up front.

The apiserver's ServiceAccount admission plugin mounts the Pod's token volume (the projected
``kube-api-access-<random>`` it adds) into every container that mounts nothing at
:data:`TOKEN_MOUNT_PATH`. It runs before the admission webhooks, so the Pod the webhook sees
already has the volume and its own containers mount it; the containers we add do not. When a
webhook changes the object, the apiserver runs its built-in mutating plugins again, that one
then mounts the token into our containers, and since the object changed after our call,
``reinvocationPolicy: IfNeeded`` makes the apiserver call the webhook a second time: a second
AdmissionReview with the whole injected Pod, both ways, per Pod created, only to be told
"already injected". Adding the very mount the plugin would add leaves it nothing to change,
and the webhook is called once per Pod.

Nothing is decided here that the plugin would not do anyway: the same volume (the first named
``kube-api-access-*``, as the plugin looks it up), the same mount (name, read-only, path),
appended last, only to containers without a mount at that path, and only when the Pod does
not opt out with ``automountServiceAccountToken: false``. A Pod without such a volume (a
manifest from a file, a template, a Pod whose ServiceAccount does not automount) is left as
it is. The ServiceAccount's own ``automountServiceAccountToken`` is not known here; a Pod
that carries a ``kube-api-access-*`` volume under a ServiceAccount that does not automount
(its volume copied from another Pod) would get the mount in our containers where the plugin
would not add it: the same token its own containers already mount.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

#: Where the plugin mounts the token (``DefaultAPITokenMountPath`` in Kubernetes).
TOKEN_MOUNT_PATH: Final = "/var/run/secrets/kubernetes.io/serviceaccount"
#: The prefix of the projected token volume the plugin adds (``ServiceAccountVolumeName-``).
TOKEN_VOLUME_PREFIX: Final = "kube-api-access-"


def token_volume(spec: Mapping[str, Any]) -> str | None:
    """The name of the token volume the plugin would mount into a container that lacks one,
    or ``None`` when it would mount none that is known here."""
    if spec.get("automountServiceAccountToken") is False:
        return None
    for volume in spec.get("volumes") or []:
        name = volume.get("name")
        if isinstance(name, str) and name.startswith(TOKEN_VOLUME_PREFIX):
            return name
    return None


def mount_service_account_token(spec: dict[str, Any]) -> None:
    """Mount the Pod's token volume, as the ServiceAccount admission plugin would, into every
    init container and container of ``spec`` that mounts nothing at :data:`TOKEN_MOUNT_PATH`.

    ``spec``'s container lists and the containers in them are replaced, not changed in place:
    the webhook's rendered Pod shares unchanged objects with the request's.
    """
    volume = token_volume(spec)
    if volume is None:
        return
    mount = {"name": volume, "readOnly": True, "mountPath": TOKEN_MOUNT_PATH}
    for field in ("initContainers", "containers"):
        containers = spec.get(field)
        if not containers:
            continue
        mounted = []
        for container in containers:
            mounts = container.get("volumeMounts") or []
            if not any(m.get("mountPath") == TOKEN_MOUNT_PATH for m in mounts):
                container = {**container, "volumeMounts": [*mounts, dict(mount)]}
            mounted.append(container)
        spec[field] = mounted
