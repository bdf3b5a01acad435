"""A tier's ``settings:`` allowance: which run-time settings a session may change, and to what.

::

    settings:                            # in a tier of the policy file
      statement_timeout: {min: 1s, max: 10min}    # 0 (= no timeout) is above every max
      work_mem: {max: 256MB}
      lock_timeout: {min: 100ms, max: 1min}
      application_name: {}                       # any value
      datestyle: {values: ["ISO, MDY", "ISO, DMY"]}
      my.custom_setting: {values: [on, off]}

A tier with a ``settings`` section refuses every change of a setting it does not list, and of a
listed one to a value outside its range (rule id ``settings``, 42501 naming the setting and the
bound).  Checked for ``SET``, ``SET LOCAL``, ``set_config()`` (also inside embedded SQL and ``DO``
blocks), the ``SET`` clause of ``CREATE / ALTER FUNCTION`` and ``ALTER ROLE / DATABASE ... SET``.
``RESET x`` and ``SET x TO DEFAULT`` (back to the session's default) and ``RESET ALL`` are always
allowed; a value the gateway cannot read (``set_config('work_mem', f(x), false)``, a computed
setting name) is refused unless the setting allows any value.  Without a ``settings`` section a
tier's rules alone decide (class ``session``), as before.

Numbers take PostgreSQL's units: memory ``B kB MB GB TB``, time ``us ms s min h d``; a bare
number in ``SET`` is in the setting's own unit (``work_mem = 4096`` is 4096 kB), known for the
common settings (:data:`BASE_UNITS`) or given with ``unit:`` in the allowance.  Settings where a
special value means "no limit" (``statement_timeout = 0``, ``temp_file_limit = -1``...) treat it
as infinitely large.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from .analysis import SettingChange

__all__ = [
    "BASE_UNITS",
    "SettingAllowance",
    "SettingsError",
    "check_change",
    "parse_quantity",
]

_MEMORY: Final = {"B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
_TIME: Final = {
    "us": 1,
    "ms": 1000,
    "s": 1000_000,
    "min": 60_000_000,
    "h": 3_600_000_000,
    "d": 86_400_000_000,
}
BASE_UNITS: Final[dict[str, str]] = {
    # time (the unit of a bare number)
    "statement_timeout": "ms",
    "lock_timeout": "ms",
    "idle_in_transaction_session_timeout": "ms",
    "idle_session_timeout": "ms",
    "transaction_timeout": "ms",
    "deadlock_timeout": "ms",
    "vacuum_cost_delay": "ms",
    "commit_delay": "us",
    "log_min_duration_statement": "ms",
    "log_min_duration_sample": "ms",
    "log_autovacuum_min_duration": "ms",
    "tcp_keepalives_idle": "s",
    "tcp_keepalives_interval": "s",
    "tcp_user_timeout": "ms",
    "client_connection_check_interval": "ms",
    # memory
    "work_mem": "kB",
    "maintenance_work_mem": "kB",
    "logical_decoding_work_mem": "kB",
    "temp_file_limit": "kB",
    "temp_buffers": "8kB",
    "effective_cache_size": "8kB",
    "gin_pending_list_limit": "kB",
    "backend_flush_after": "8kB",
    # plain numbers
    "hash_mem_multiplier": "",
    "max_parallel_workers_per_gather": "",
    "max_parallel_maintenance_workers": "",
    "effective_io_concurrency": "",
    "maintenance_io_concurrency": "",
    "jit_above_cost": "",
    "jit_inline_above_cost": "",
    "jit_optimize_above_cost": "",
    "geqo_threshold": "",
    "from_collapse_limit": "",
    "join_collapse_limit": "",
    "random_page_cost": "",
    "seq_page_cost": "",
    "cpu_tuple_cost": "",
    "extra_float_digits": "",
    "vacuum_cost_limit": "",
}
"""The unit of a bare number for common numeric settings (``""``: a plain number)."""
_UNLIMITED: Final = {
    "statement_timeout": 0,
    "lock_timeout": 0,
    "idle_in_transaction_session_timeout": 0,
    "idle_session_timeout": 0,
    "transaction_timeout": 0,
    "temp_file_limit": -1,
    "tcp_user_timeout": 0,
    "log_min_duration_statement": -1,
    "jit_above_cost": -1,
}
"""Values that switch a limit off: compared as infinitely large."""
_NUMBER: Final = re.compile(r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z]*)\s*")


class SettingsError(ValueError):
    """A bad allowance in the policy file."""


def parse_quantity(text: str, base: str) -> float | None:
    """``text`` ("64MB", "5min", "4096") in canonical units (bytes, microseconds or a plain
    number), a bare number being in ``base`` ("kB", "ms", "8kB", "" ...); None if unreadable."""
    m = _NUMBER.fullmatch(text)
    if m is None:
        return None
    number, unit = float(m.group(1)), m.group(2)
    if not unit:
        unit = base
        if base == "8kB":
            return number * 8192
    if not unit:
        return number
    if unit in _MEMORY:
        return number * _MEMORY[unit]
    if unit in _TIME:
        return number * _TIME[unit]
    return None


def _kind(unit: str) -> str:
    if unit in _MEMORY or unit == "8kB":
        return "memory"
    if unit in _TIME:
        return "time"
    return "number"


def _show(value: float, kind: str) -> str:
    if math.isinf(value):
        return "unlimited"
    if kind == "memory":
        for u in ("TB", "GB", "MB", "kB"):
            if value >= _MEMORY[u] and value % _MEMORY[u] == 0:
                return f"{int(value // _MEMORY[u])}{u}"
        return f"{value:g}B"
    if kind == "time":
        for u in ("d", "h", "min", "s", "ms"):
            if value >= _TIME[u] and value % _TIME[u] == 0:
                return f"{int(value // _TIME[u])}{u}"
        return f"{value:g}us"
    return f"{value:g}"


@dataclass(frozen=True, slots=True)
class SettingAllowance:
    """What one listed setting may be set to."""

    name: str
    minimum: float | None = None
    maximum: float | None = None
    values: frozenset[str] | None = None
    """Allowed values (compared case-insensitively, spaces after commas normalised)."""
    unit: str = ""
    """Unit of a bare number for this setting."""

    @property
    def any_value(self) -> bool:
        return self.minimum is None and self.maximum is None and self.values is None

    @classmethod
    def build(cls, name: str, spec: Mapping[str, object]) -> SettingAllowance:
        """From the policy file's mapping (keys ``min``, ``max``, ``values``, ``unit``);
        raises :class:`SettingsError` naming the problem."""
        unknown = set(spec) - {"min", "max", "values", "unit"}
        if unknown:
            raise SettingsError(
                f"unknown key(s) {', '.join(sorted(unknown))} (min, max, values, unit)"
            )
        unit_spec = spec.get("unit")
        if unit_spec is not None and (
            not isinstance(unit_spec, str)
            or (
                unit_spec
                and unit_spec not in _MEMORY
                and unit_spec not in _TIME
                and unit_spec != "8kB"
            )
        ):
            raise SettingsError(
                f"unit: expected one of B kB 8kB MB GB TB us ms s min h d, got {unit_spec!r}"
            )
        unit = unit_spec if isinstance(unit_spec, str) else BASE_UNITS.get(name)
        bounds: dict[str, float] = {}
        for key in ("min", "max"):
            raw = spec.get(key)
            if raw is None:
                continue
            if unit is None:
                raise SettingsError(
                    f"{key}: the unit of {name} is not known to veilgate: add unit: (e.g. ms, kB)"
                )
            q = parse_quantity(str(raw), unit)
            if q is None or isinstance(raw, bool):
                raise SettingsError(f"{key}: expected a number with an optional unit, got {raw!r}")
            if unit and _kind(unit) != "number" and _NUMBER.fullmatch(str(raw)):
                m = _NUMBER.fullmatch(str(raw))
                given = m.group(2) if m else ""
                if given and _kind(given) != _kind(unit):
                    raise SettingsError(f"{key}: {raw!r} is not a {_kind(unit)} quantity")
            bounds[key] = q
        if "min" in bounds and "max" in bounds and bounds["min"] > bounds["max"]:
            raise SettingsError("min is larger than max")
        values = spec.get("values")
        allowed: frozenset[str] | None = None
        if values is not None:
            if not isinstance(values, list) or not values:
                raise SettingsError("values: expected a non-empty list")
            if bounds:
                raise SettingsError("give either values or min / max, not both")
            allowed = frozenset(_norm(_scalar(v)) for v in values)
        return cls(name, bounds.get("min"), bounds.get("max"), allowed, unit or "")

    def check(self, change: SettingChange) -> str | None:
        """None when ``change`` is allowed, else why not."""
        if self.any_value:
            return None
        if change.computed or change.values is None:
            return f"{change.how} {self.name} with a value the gateway cannot read"
        raw = ", ".join(change.values)
        if self.values is not None:
            if _norm(raw) in self.values:
                return None
            return f"{change.how} {self.name} = {raw!r}: allowed values are " + ", ".join(
                sorted(self.values)
            )
        q = parse_quantity(raw, self.unit)
        if q is None:
            return f"{change.how} {self.name} = {raw!r}: not a number the gateway can read"
        if self.name in _UNLIMITED and q == parse_quantity(str(_UNLIMITED[self.name]), self.unit):
            q = math.inf
        kind = _kind(self.unit)
        if self.minimum is not None and q < self.minimum:
            return (
                f"{change.how} {self.name} = {raw!r} is below the tier's minimum "
                f"{_show(self.minimum, kind)}"
            )
        if self.maximum is not None and q > self.maximum:
            shown = "unlimited (no limit)" if math.isinf(q) else repr(raw)
            return (
                f"{change.how} {self.name} = {shown} is above the tier's maximum "
                f"{_show(self.maximum, kind)}"
            )
        return None


def _scalar(v: object) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    return str(v)


def _norm(v: str) -> str:
    return ", ".join(p.strip() for p in v.strip().lower().split(","))


_ALWAYS: Final = frozenset({"role", "session_authorization"})
"""Judged by constructs (``set_role``...), not by the allowance: listing them is not needed."""


def check_change(allowances: Mapping[str, SettingAllowance], change: SettingChange) -> str | None:
    """None when a tier with ``allowances`` lets ``change`` through, else why not."""
    if change.resets or change.name in _ALWAYS:
        return None
    if change.name == "*":
        return f"{change.how} of a setting whose name is computed at run time"
    allowance = allowances.get(change.name)
    if allowance is None:
        return f"{change.how} {change.name}: the tier does not allow changing this setting"
    return allowance.check(change)
