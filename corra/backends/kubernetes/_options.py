"""A process's ``kubernetes = { ... }`` table: what its Job's pod runs with.

Validated when the spec is made (at submission), each error naming its field path
(``kubernetes.resources.limits.memory``), the value and what was expected. The typed fields
cover what most pods need; ``pod_template`` is merged under them for the rest (corra's own
fields win: the container's command, the restart policy, the labels corra selects by).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import attrs

from corra._errors import ConfigError

#: A DNS-1123 label (a service account's name, among others).
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
#: A Kubernetes quantity: ``500m``, ``2``, ``1.5Gi``, ``128974848``, ``129e6``.
_QUANTITY = re.compile(r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|[KMGTPE]i?|[mkun])?$")
#: An image reference: no whitespace, no control characters.
_IMAGE = re.compile(r"^[^\s\x00-\x1f]{1,4096}$")
_RESOURCE_KINDS: Final = ("requests", "limits")
_TOLERATION_FIELDS: Final = {"key", "operator", "value", "effect", "tolerationSeconds"}
_OPERATORS: Final = ("Equal", "Exists")
_EFFECTS: Final = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def _string_table(where: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: got {value!r}, expected a table of strings")
    for key, item in value.items():
        if not isinstance(key, str) or not key or not isinstance(item, str):
            raise ConfigError(f"{where}.{key}: got {item!r}, expected a string")
    return dict(value)


def _resources(value: Any) -> dict[str, dict[str, str]]:
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"kubernetes.resources: got {value!r}, expected a table of requests and limits"
        )
    out: dict[str, dict[str, str]] = {}
    for kind, table in value.items():
        where = f"kubernetes.resources.{kind}"
        if kind not in _RESOURCE_KINDS:
            raise ConfigError(f"{where}: unknown; expected requests or limits")
        quantities = _string_table(where, table)
        for name, quantity in quantities.items():
            if not _QUANTITY.match(quantity):
                raise ConfigError(
                    f"{where}.{name}: got {quantity!r}, expected a quantity such as '500m', "
                    "'2' or '1Gi'"
                )
        out[kind] = quantities
    return out


def _tolerations(value: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list | tuple):
        raise ConfigError(f"kubernetes.tolerations: got {value!r}, expected a list of tables")
    out = []
    for index, item in enumerate(value):
        where = f"kubernetes.tolerations[{index}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where}: got {item!r}, expected a table")
        unknown = sorted(set(item) - _TOLERATION_FIELDS)
        if unknown:
            raise ConfigError(
                f"{where}: unknown field(s) {unknown}; expected some of "
                f"{sorted(_TOLERATION_FIELDS)}"
            )
        for field in ("key", "value"):
            if field in item and not isinstance(item[field], str):
                raise ConfigError(f"{where}.{field}: got {item[field]!r}, expected a string")
        if item.get("operator", "Equal") not in _OPERATORS:
            raise ConfigError(
                f"{where}.operator: got {item['operator']!r}, expected one of {list(_OPERATORS)}"
            )
        if "effect" in item and item["effect"] not in _EFFECTS:
            raise ConfigError(
                f"{where}.effect: got {item['effect']!r}, expected one of {list(_EFFECTS)}"
            )
        seconds = item.get("tolerationSeconds")
        if seconds is not None and (
            isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 0
        ):
            raise ConfigError(
                f"{where}.tolerationSeconds: got {seconds!r}, expected an integer >= 0"
            )
        out.append(dict(item))
    return tuple(out)


def _image(instance: Any, attribute: Any, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not _IMAGE.match(value)):
        raise ConfigError(
            f"kubernetes.image: got {value!r}, expected an image such as 'python:3.12-slim'"
        )


def _service_account(instance: Any, attribute: Any, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not _DNS_LABEL.match(value)):
        raise ConfigError(
            f"kubernetes.service_account: got {value!r}, expected a name of lower-case "
            "letters, digits and '-' (at most 63)"
        )


def _pod_template(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"kubernetes.pod_template: got {value!r}, expected a table")
    return dict(value)


@attrs.frozen
class KubernetesOptions:
    """A process's ``kubernetes`` table (`corra.processes._backend.BackendPlugin.options`)."""

    image: str | None = attrs.field(default=None, validator=_image)
    """The container image the program runs in (its ``argv`` is the container's command);
    None: the cluster's (``[hosts.NAME.kubernetes] image``)."""
    resources: dict[str, dict[str, str]] = attrs.field(factory=dict, converter=_resources)
    """``requests`` and ``limits``: quantities by resource (``cpu = "500m"``)."""
    node_selector: dict[str, str] = attrs.field(
        factory=dict, converter=lambda value: _string_table("kubernetes.node_selector", value)
    )
    tolerations: tuple[dict[str, Any], ...] = attrs.field(default=(), converter=_tolerations)
    service_account: str | None = attrs.field(default=None, validator=_service_account)
    pod_template: dict[str, Any] = attrs.field(factory=dict, converter=_pod_template)
    """A pod template merged under corra's fields, for what the typed ones do not cover."""
    suspend_on_pause: bool = attrs.field(default=False)
    """Pausing suspends the Job while its container has not started (Kubernetes >= 1.21)."""
    status: bool = attrs.field(default=True)
    """Follow the program's ``$CORRA_STATUS`` through a sidecar of the same image, which
    needs ``/bin/sh`` and ``tail -F`` there; false for an image without them."""

    def __attrs_post_init__(self) -> None:
        for name in ("suspend_on_pause", "status"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"kubernetes.{name}: got {getattr(self, name)!r}, expected true or false"
                )
