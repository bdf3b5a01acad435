"""``veilgate sessions export``: records as JSON lines or CSV with OCSF-style field names.

One event per record of the selected sessions, shaped after OCSF *Datastore Activity*
(``class_uid`` 6005, category 6 *Application Activity*) so a SIEM can map it without a custom
parser.  Fields (dotted names are nested objects in JSON lines and column names in CSV):

============================  ==============================================================
``time``                      event time, milliseconds since the epoch
``class_uid`` / ``class_name``  6005 / ``Datastore Activity``
``category_uid``              6
``activity_id`` / ``activity_name``  1 ``Connect`` (session start), 2 ``Disconnect``
                              (session end), 3 ``Query`` (a statement), 99 ``Other``
``type_uid``                  ``class_uid * 100 + activity_id``
``status`` / ``status_id``    ``Success`` (1) / ``Failure`` (2)
``status_code``               the SQLSTATE, when there is one
``status_detail``             the statement's status (ok, error, refused, skipped, ...)
``disposition``               ``Allowed`` / ``Blocked`` (refused by the gateway)
``severity_id``               1 informational, 3 medium (refused), 2 low (error)
``actor.user.uid``            the principal's subject (object id)
``actor.user.name``           the principal's label
``actor.user.org.uid``        its tenant
``actor.app_uid``             its client application id
``actor.session.uid``         the veilgate session id
``src_endpoint.ip`` / ``.port``  the client's address
``dst_endpoint.hostname`` / ``.port``  the upstream server
``database.name``             the target database
``query_info.query_string``   the statement excerpt (credentials redacted)
``query_info.uid``            its fingerprint
``policy.uid``                the rule that decided; ``policy.name`` the decision's action
``metadata.product.name``     ``veilgate``; ``metadata.uid`` the record's ``seq``
``unmapped.*``                the rest: tier, path, tag, rows, bytes, duration_us, mask counts
============================  ==============================================================
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any, TextIO

__all__ = ["CSV_FIELDS", "ocsf_events", "write_csv", "write_jsonl"]

_ACTIVITY = {
    "session_start": (1, "Connect"),
    "session_end": (2, "Disconnect"),
    "statement": (3, "Query"),
}
CSV_FIELDS = (
    "time",
    "class_uid",
    "class_name",
    "category_uid",
    "activity_id",
    "activity_name",
    "type_uid",
    "status",
    "status_id",
    "status_code",
    "status_detail",
    "disposition",
    "severity_id",
    "actor.user.uid",
    "actor.user.name",
    "actor.user.org.uid",
    "actor.app_uid",
    "actor.session.uid",
    "src_endpoint.ip",
    "src_endpoint.port",
    "dst_endpoint.hostname",
    "dst_endpoint.port",
    "database.name",
    "query_info.query_string",
    "query_info.uid",
    "policy.uid",
    "policy.name",
    "metadata.product.name",
    "metadata.uid",
    "unmapped.kind",
    "unmapped.tier",
    "unmapped.path",
    "unmapped.tag",
    "unmapped.rows",
    "unmapped.bytes",
    "unmapped.duration_us",
    "unmapped.entities",
)


def _ms(ts: Any) -> int | None:
    if not isinstance(ts, str):
        return None
    try:
        return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    if value is None:
        return
    *parents, last = dotted.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[last] = value


def ocsf_events(records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """OCSF-style events for the records of sessions (each session's start record first)."""
    context: dict[str, dict[str, Any]] = {}
    for r in records:
        sid = str(r.get("sid"))
        kind = str(r.get("kind"))
        if kind == "session_start":
            context[sid] = r
        start = context.get(sid, {})
        activity_id, activity = _ACTIVITY.get(kind, (99, "Other"))
        status = str(r.get("status", "ok"))
        failed = status not in ("ok", "suspended")
        refused = status == "refused"
        e: dict[str, Any] = {}
        _set(e, "time", _ms(r.get("ts")))
        _set(e, "class_uid", 6005)
        _set(e, "class_name", "Datastore Activity")
        _set(e, "category_uid", 6)
        _set(e, "activity_id", activity_id)
        _set(e, "activity_name", activity)
        _set(e, "type_uid", 600500 + activity_id)
        _set(e, "status", "Failure" if failed else "Success")
        _set(e, "status_id", 2 if failed else 1)
        _set(e, "status_code", r.get("sqlstate"))
        if kind == "statement":
            _set(e, "status_detail", status)
            _set(e, "disposition", "Blocked" if refused else "Allowed")
        _set(e, "severity_id", 3 if refused else 2 if failed else 1)
        p = start.get("principal") or {}
        _set(e, "actor.user.uid", p.get("subject"))
        _set(e, "actor.user.name", p.get("label"))
        _set(e, "actor.user.org.uid", p.get("tenant"))
        _set(e, "actor.app_uid", p.get("client_app"))
        _set(e, "actor.session.uid", sid)
        c = start.get("client") or {}
        _set(e, "src_endpoint.ip", c.get("address"))
        _set(e, "src_endpoint.port", c.get("port"))
        t = start.get("target") or {}
        _set(e, "dst_endpoint.hostname", t.get("host"))
        _set(e, "dst_endpoint.port", t.get("port"))
        _set(e, "database.name", t.get("dbname"))
        _set(e, "query_info.query_string", r.get("sql"))
        _set(e, "query_info.uid", r.get("fp"))
        d = r.get("decision") or {}
        _set(e, "policy.uid", d.get("rule"))
        _set(e, "policy.name", d.get("action"))
        _set(e, "metadata.product.name", "veilgate")
        _set(e, "metadata.uid", r.get("seq"))
        _set(e, "unmapped.kind", kind)
        _set(e, "unmapped.tier", start.get("tier"))
        for key in ("path", "tag", "rows", "bytes", "duration_us"):
            _set(e, f"unmapped.{key}", r.get(key))
        if kind == "session_end":
            for key in ("reason", "statements", "errors", "refused", "rows", "bytes"):
                _set(e, f"unmapped.{key}", r.get(key))
        if kind == "mask":
            _set(e, "unmapped.entities", r.get("entities"))
        yield e


def write_jsonl(events: Iterable[dict[str, Any]], out: TextIO) -> int:
    n = 0
    for e in events:
        out.write(json.dumps(e, separators=(",", ":"), ensure_ascii=False) + "\n")
        n += 1
    return n


def _flat(e: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in e.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key != "unmapped.entities":
            out.update(_flat(v, key + "."))
        else:
            out[key] = json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v
    return out


def write_csv(events: Iterable[dict[str, Any]], out: TextIO) -> int:
    w = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    n = 0
    for e in events:
        w.writerow(_flat(e))
        n += 1
    return n
