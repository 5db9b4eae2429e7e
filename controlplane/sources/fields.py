"""Reading typed fields out of parsed YAML/JSON, recording every problem with its path.

A :class:`Fields` wraps one mapping of a raw object. Its getters never raise: a wrong
or missing value is recorded as a :class:`Problem` naming the dotted field path, and a
neutral default is returned, so one pass over an object reports all of its problems.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controlplane.model import EMPTY, FrozenMap, Severity

_DNS1123_LABEL_RE = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"^{_DNS1123_LABEL_RE}(\.{_DNS1123_LABEL_RE})*$")
_DNS1123_LABEL = re.compile(rf"^{_DNS1123_LABEL_RE}$")
_IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with (or ignored in) an object, at a field path."""

    field: str
    message: str
    severity: Severity = Severity.ERROR


_TYPE_NAMES: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (type(None), "null"),
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a number"),
    (str, "a string"),
    (list, "a list"),
    (Mapping, "a mapping"),
)


def type_name(value: Any) -> str:
    """How YAML would call the type of ``value``, with its article, for messages."""
    for types, name in _TYPE_NAMES:
        if isinstance(value, types):
            return name
    return f"a {type(value).__name__}"


def is_dns1123_subdomain(value: str) -> bool:
    """Kubernetes object names: lower-case alphanumerics, '-' and '.', at most 253."""
    return len(value) <= 253 and bool(_DNS1123_SUBDOMAIN.match(value))


def is_dns1123_label(value: str) -> bool:
    """Namespace names: lower-case alphanumerics and '-', at most 63."""
    return len(value) <= 63 and bool(_DNS1123_LABEL.match(value))


def is_port_name(value: str) -> bool:
    """An IANA service name, as Kubernetes requires for named ports."""
    has_letter = any(c.isalpha() for c in value)
    return bool(_IANA_SVC_NAME.match(value)) and "--" not in value and has_letter


def parse_ip(value: str) -> str | None:
    """The canonical text of an IP address, or None when it is not one."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def is_ip_or_cidr(value: str) -> bool:
    """An address or a CIDR block (host bits may be set, as Istio accepts)."""
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


class Fields:
    """Typed access to one raw mapping, recording problems under ``path``."""

    def __init__(self, data: Mapping[str, Any], path: str, problems: list[Problem]) -> None:
        self.data = data
        self.path = path
        self.problems = problems

    def at(self, key: str | int) -> str:
        """The dotted path of a child field."""
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str | int | None, message: str) -> None:
        """Records an error at ``key`` (or at this mapping itself)."""
        self.problems.append(Problem(self.path if key is None else self.at(key), message))

    def warn(self, key: str | int | None, message: str) -> None:
        """Records a warning at ``key`` (or at this mapping itself)."""
        where = self.path if key is None else self.at(key)
        self.problems.append(Problem(where, message, Severity.WARNING))

    def has(self, key: str) -> bool:
        """Whether the field is present and not null."""
        return self.data.get(key) is not None

    def reject_unknown(self, known: set[str]) -> None:
        """Records every field not in ``known`` (as a schema-validating API server would)."""
        for key in self.data:
            if key not in known:
                self.error(str(key), f"unknown field (known: {', '.join(sorted(known))})")

    def mapping(self, key: str, *, required: bool = False) -> Fields | None:
        """A nested mapping, or None when absent (an error if required)."""
        value = self.data.get(key)
        if value is None:
            if required:
                self.error(key, "required field is missing")
            return None
        if not isinstance(value, Mapping):
            self.error(key, f"must be a mapping, not {type_name(value)}")
            return None
        return Fields(value, self.at(key), self.problems)

    def string(self, key: str, *, required: bool = False, default: str = "") -> str:
        """A string field; numbers and booleans are errors, as in Kubernetes."""
        value = self.data.get(key)
        if value is None:
            if required:
                self.error(key, "required field is missing")
            return default
        if not isinstance(value, str):
            self.error(key, f"must be a string, not {type_name(value)} ({value!r})")
            return default
        if required and not value:
            self.error(key, "must not be empty")
        return value

    def boolean(self, key: str, *, default: bool = False) -> bool:
        """A boolean field."""
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.error(key, f"must be true or false, not {type_name(value)} ({value!r})")
            return default
        return value

    def port(self, key: str, *, required: bool = False) -> int | None:
        """A port number 1-65535."""
        value = self.data.get(key)
        if value is None:
            if required:
                self.error(key, "required field is missing")
            return None
        return check_port(value, self.at(key), self.problems)

    def str_map(self, key: str) -> FrozenMap[str, str] | None:
        """A string-to-string mapping (labels, selectors), or None when absent."""
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            self.error(key, f"must be a mapping of strings, not {type_name(value)}")
            return None
        good: dict[str, str] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                self.error(f"{key}.{k}", f"keys must be strings, not {type_name(k)}")
                continue
            if not isinstance(v, str):
                self.error(
                    f"{key}.{k}",
                    f"must be a string, not {type_name(v)} ({v!r}); quote numbers and booleans",
                )
                continue
            good[k] = v
        return FrozenMap(good)

    def str_list(self, key: str) -> tuple[str, ...]:
        """A list of strings (absent: empty)."""
        for_each = self.sequence(key)
        out: list[str] = []
        for i, item in enumerate(for_each):
            if not isinstance(item, str):
                self.problems.append(
                    Problem(
                        f"{self.at(key)}[{i}]",
                        f"must be a string, not {type_name(item)} ({item!r})",
                    )
                )
                continue
            out.append(item)
        return tuple(out)

    def sequence(self, key: str, *, nonempty: bool = False) -> list[Any]:
        """A list (absent: empty); ``nonempty`` makes ``key: []`` an error."""
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(key, f"must be a list, not {type_name(value)}")
            return []
        if nonempty and not value:
            self.error(key, "must not be an empty list (leave it out instead)")
        return value

    def mappings(self, key: str, *, nonempty: bool = False) -> list[Fields]:
        """A list of mappings, each as :class:`Fields` (wrong items are errors)."""
        out: list[Fields] = []
        for i, item in enumerate(self.sequence(key, nonempty=nonempty)):
            path = f"{self.at(key)}[{i}]"
            if not isinstance(item, Mapping):
                self.problems.append(Problem(path, f"must be a mapping, not {type_name(item)}"))
                continue
            out.append(Fields(item, path, self.problems))
        return out


def check_port(value: Any, path: str, problems: list[Problem]) -> int | None:
    """A port given as an integer (or a decimal string, as Istio's API has them)."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.isdigit():
        number = int(value)
    if number is None or not 1 <= number <= 65535:
        problems.append(Problem(path, f"must be a port number 1-65535, not {value!r}"))
        return None
    return number


def labels_of(meta: Fields | None) -> tuple[FrozenMap[str, str], FrozenMap[str, str]]:
    """``metadata.labels`` and ``metadata.annotations`` (empty when absent)."""
    if meta is None:
        return EMPTY, EMPTY
    return meta.str_map("labels") or EMPTY, meta.str_map("annotations") or EMPTY
