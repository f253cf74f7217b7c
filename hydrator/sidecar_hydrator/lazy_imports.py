"""Modules the hydrator's libraries import at start but most hydrators never use, loaded on
first use instead.

aiokafka imports ``cramjam`` (the snappy, lz4 and zstd codecs, 1.7 MiB resident) when it is
imported, and uses it only through attribute reads (``cramjam.lz4.decompress``) when it
compresses or decompresses a record batch. Registered as a :class:`DeferredModule` before
aiokafka is imported, ``import cramjam`` binds a stand-in whose first attribute read imports the
real module: a topic without compression never pays for it, a compressed one loads it then.
(``importlib.util.LazyLoader`` does not do here: the ``import`` statement itself reads the
module's ``__spec__``, which loads a lazy module at once.)
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

#: Imported by aiokafka at start, used only through attribute reads at run time.
DEFERRED = ("cramjam",)


class DeferredModule(types.ModuleType):
    """Stands in for module ``name`` until an attribute of it is read."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__spec__ = None
        self.__loaded: types.ModuleType | None = None

    def __getattr__(self, attribute: str) -> Any:
        # Only attributes the stand-in lacks get here: the real module's, on first use.
        if attribute.startswith("_DeferredModule__"):
            raise AttributeError(attribute)
        if self.__loaded is None:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
            self.__loaded = importlib.import_module(self.__name__)
        return getattr(self.__loaded, attribute)

    @property
    def loaded(self) -> bool:
        """Whether the real module was imported (for tests and the footprint benchmark)."""
        return self.__loaded is not None


def defer(names: tuple[str, ...] = DEFERRED) -> None:
    """Stand in for ``names`` that are installed and not imported yet (idempotent)."""
    for name in names:
        if name in sys.modules or importlib.util.find_spec(name) is None:
            continue  # imported already, or not installed (its importer handles that)
        sys.modules[name] = DeferredModule(name)
