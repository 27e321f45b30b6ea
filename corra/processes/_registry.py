"""The installed backends: every `BackendPlugin` registered under ``corra.backends``.

Built-in and third-party backends are found the same way, through entry points (a package's
``[project.entry-points."corra.backends"]`` table: ``NAME = "module:PLUGIN"``). Nothing here
names a backend.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from typing import Any

from corra._errors import ConfigError
from corra.processes._backend import ENTRY_POINT_GROUP, BackendPlugin, describe_plugin


class Registry:
    """The plug-ins found once: loading an entry point imports its package, so it is done
    at most once per registry (the runtime and the edge each hold one, or share `installed`).
    """

    def __init__(self, plugins: Mapping[str, BackendPlugin] | None = None) -> None:
        self._plugins = dict(plugins) if plugins is not None else None

    @property
    def plugins(self) -> Mapping[str, BackendPlugin]:
        """Every installed backend, by name, sorted by name.

        Raises:
            ConfigError: an entry point cannot be loaded, is not a `BackendPlugin`, or its
                name differs from the plug-in's; two distributions register one name.
        """
        if self._plugins is None:
            self._plugins = _discover()
        return self._plugins

    def get(self, name: str) -> BackendPlugin:
        """The plug-in named ``name``.

        Raises:
            ConfigError: no installed backend has that name (the installed ones are named).
        """
        plugins = self.plugins
        try:
            return plugins[name]
        except (KeyError, TypeError):
            raise ConfigError(
                f"backend: got {name!r}, expected one of {list(plugins)} "
                f"(the installed backends: corra backends)"
            ) from None

    def describe(self) -> list[dict[str, Any]]:
        """Every installed backend, described (`describe_plugin`), by name: what
        ``corra backends --json`` prints and ``GET /v1/backends`` answers.

        Raises:
            ConfigError: as `plugins`.
        """
        return [describe_plugin(plugin) for plugin in self.plugins.values()]


def _discover() -> dict[str, BackendPlugin]:
    found: dict[str, BackendPlugin] = {}
    origin: dict[str, str] = {}
    for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        where = f"entry point {point.name} = {point.value!r}"
        try:
            plugin = point.load()
        except Exception as exc:  # a third party's import error: name it, never hide it
            raise ConfigError(f"{where}: cannot be loaded: {type(exc).__name__}: {exc}") from exc
        if not isinstance(plugin, BackendPlugin):
            raise ConfigError(f"{where}: got {plugin!r}, expected a corra BackendPlugin")
        if plugin.name != point.name:
            raise ConfigError(f"{where}: the plug-in calls itself {plugin.name!r}")
        if point.name in found and origin[point.name] != point.value:
            raise ConfigError(f"{where}: backend {point.name!r} is registered twice")
        found[point.name] = plugin
        origin[point.name] = point.value
    return dict(sorted(found.items()))


#: The backends installed in this Python environment.
installed = Registry()
