"""The records of the mock Salesforce: schema, ids, validation, CRUD, upserts, collections.

Not thread-safe on its own: SalesforceMock holds its lock around every call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from recsync.mock import soql

Record = dict[str, Any]
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_CHK = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_SYSTEM = ("Id", "IsDeleted", "CreatedDate", "LastModifiedDate", "SystemModstamp")
# name, type, createable/updateable, nillable, externalId, unique, length
_F = tuple[str, str, bool, bool, bool, bool, int]
_COMMON: list[_F] = [
    ("Id", "id", False, False, False, True, 18),
    ("IsDeleted", "boolean", False, False, False, False, 0),
    ("CreatedDate", "datetime", False, False, False, False, 0),
    ("LastModifiedDate", "datetime", False, False, False, False, 0),
    ("SystemModstamp", "datetime", False, False, False, False, 0),
    ("Record_Id__c", "string", True, True, True, True, 255),
    ("Legacy_Id__c", "string", True, True, True, False, 255),
]
_OBJECTS: dict[str, tuple[str, list[_F], tuple[str, ...]]] = {
    "Contact": (
        "003",
        [
            ("FirstName", "string", True, True, False, False, 40),
            ("LastName", "string", True, False, False, False, 80),
            ("Email", "email", True, True, False, False, 80),
            ("Phone", "phone", True, True, False, False, 40),
            ("Title", "string", True, True, False, False, 128),
            ("Status__c", "picklist", True, True, False, False, 255),
            ("AccountId", "reference", True, True, False, False, 18),
            ("Description", "textarea", True, True, False, False, 32000),
        ],
        ("LastName",),
    ),
    "Account": (
        "001",
        [
            ("Name", "string", True, False, False, False, 255),
            ("Phone", "phone", True, True, False, False, 40),
            ("Website", "url", True, True, False, False, 255),
            ("Industry", "picklist", True, True, False, False, 255),
        ],
        ("Name",),
    ),
    "Lead": (
        "00Q",
        [
            ("FirstName", "string", True, True, False, False, 40),
            ("LastName", "string", True, False, False, False, 80),
            ("Company", "string", True, False, False, False, 255),
            ("Email", "email", True, True, False, False, 80),
            ("Status", "picklist", True, False, False, False, 255),
        ],
        ("LastName", "Company"),
    ),
}
_DEMO = {
    "record_id": "Record_Id__c",
    "full_name": "LastName",
    "email_address": "Email",
    "status": "Status__c",
}


class SfError(Exception):
    """A whole-request error: HTTP ``status`` and Salesforce ``code``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _RecErr(Exception):
    def __init__(self, code: str, message: str, fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.err: dict[str, Any] = {"statusCode": code, "message": message, "fields": fields or []}


_B62_PAIRS = [a + b for a in _B62 for b in _B62]


def sf_id(prefix: str, n: int) -> str:
    """The 18-character id number ``n`` with key prefix ``prefix``."""
    pairs = []
    for _ in range(6):
        n, r = divmod(n, 3844)
        pairs.append(_B62_PAIRS[r])
    pairs.reverse()
    return with_checksum(prefix + "".join(pairs))


# per character "1" for an upper-case letter, else "0": the checksum's bits
_UPPER_BITS = {i: "1" if "A" <= chr(i) <= "Z" else "0" for i in range(128)}


def with_checksum(id15: str) -> str:
    flags = id15.translate(_UPPER_BITS)
    return (id15 + _CHK[int(flags[4::-1], 2)] + _CHK[int(flags[9:4:-1], 2)]
            + _CHK[int(flags[14:9:-1], 2)])


_NOW: list[Any] = [None, ""]  # (second, its text)


def now_text(clock: Callable[[], float] = time.time) -> str:
    """The current time, whole seconds, in Salesforce's format (cached per second)."""
    sec = int(clock())
    if _NOW[0] != sec:
        _NOW[1] = soql.ts_text(datetime.fromtimestamp(sec, UTC))
        _NOW[0] = sec
    return str(_NOW[1])


class Store:
    def __init__(self, sobjects: tuple[str, ...],
                 clock: Callable[[], float] = time.time) -> None:
        self.clock = clock  # the records' timestamps
        self.objects = {o: _OBJECTS[o] for o in sobjects if o in _OBJECTS}
        self.fields: dict[str, dict[str, _F]] = {
            o: {f[0]: f for f in _COMMON + spec[1]} for o, spec in self.objects.items()
        }
        self.lower = {o: {k.lower(): k for k in fs} for o, fs in self.fields.items()}
        self.blank: dict[str, Record] = {o: dict.fromkeys(fs) for o, fs in self.fields.items()}
        self.soql_schema: dict[str, dict[str, str]] = {}
        for o, fs in self.fields.items():
            m = dict(self.lower[o])
            m.update(
                {
                    "#" + k: f[1] if f[1] in ("datetime", "boolean") else "string"
                    for k, f in fs.items()
                }
            )
            self.soql_schema[o] = m
        self.data: dict[str, dict[str, Record]] = {o: {} for o in self.objects}
        self.ext: dict[str, dict[str, dict[str, list[str]]]] = {
            o: {k: {} for k, f in fs.items() if f[4]} for o, fs in self.fields.items()
        }
        # external id fields that must be unique, per object
        self.unique_ext: dict[str, tuple[str, ...]] = {
            o: tuple(k for k in e if self.fields[o][k][5]) for o, e in self.ext.items()
        }
        self.seq = 0
        self.dirty = False

    # ------------------------------------------------------------------ persistence

    def dump(self) -> dict[str, Any]:
        return {"version": 1, "seq": self.seq, "objects": self.data}

    def load(self, blob: dict[str, Any]) -> None:
        self.seq = int(blob.get("seq", 0))
        for obj, rows in blob.get("objects", {}).items():
            if obj in self.data:
                self.data[obj] = dict(rows)
                for rec in rows.values():
                    self._index(obj, None, rec)

    # ------------------------------------------------------------------ helpers

    def object_name(self, name: str) -> str:
        if name in self.objects:
            return name
        for o in self.objects:
            if o.lower() == name.lower():
                return o
        raise SfError(404, "NOT_FOUND", f"The requested resource does not exist: {name}")

    def rows(self, obj: str) -> list[Record]:
        return list(self.data[obj].values())

    def _index(self, obj: str, old: Record | None, new: Record | None) -> None:
        for fname, idx in self.ext[obj].items():
            ov = old.get(fname) if old and not old["IsDeleted"] else None
            nv = new.get(fname) if new and not new["IsDeleted"] else None
            if ov == nv:
                continue
            if ov is not None:
                ids = idx.get(ov.lower(), [])
                if old and old["Id"] in ids:
                    ids.remove(old["Id"])
                if not ids:
                    idx.pop(ov.lower(), None)
            if nv is not None and new is not None:
                idx.setdefault(nv.lower(), []).append(new["Id"])

    def canonical(self, obj: str, values: Record) -> Record:
        """``values`` with field names in their canonical spelling (Salesforce field names
        are case-insensitive: ``id``, ``lastname``); names the object lacks stay as given."""
        fs, low = self.fields[obj], self.lower[obj]
        if all(k in fs or k == "attributes" for k in values):
            return values
        return {k if k in fs else low.get(k.lower(), k): v for k, v in values.items()}

    def _find(self, obj: str, rid: str) -> Record:
        rec = self.data[obj].get(rid) if len(rid) == 18 else None
        if rec is None and len(rid) == 15:
            rec = self.data[obj].get(with_checksum(rid))
        if rec is None:
            raise SfError(404, "NOT_FOUND", "The requested resource does not exist")
        if rec["IsDeleted"]:
            raise SfError(404, "ENTITY_IS_DELETED", "entity is deleted")
        return rec

    def project(self, obj: str, rec: Record, fields: list[str] | None, version: str) -> Record:
        out: Record = {
            "attributes": {
                "type": obj,
                "url": f"/services/data/{version}/sobjects/{obj}/{rec['Id']}",
            }
        }
        for f in fields if fields is not None else self.fields[obj]:
            out[f] = rec.get(f)
        return out

    def _clean(self, obj: str, values: Record, creating: bool) -> Record:
        """Validated field values (canonical names, coerced types); raises _RecErr."""
        fs, low = self.fields[obj], self.lower[obj]
        out: Record = {}
        for k, v in values.items():
            if k == "attributes":
                continue
            name = k if k in fs else low.get(k.lower())
            if name is None:
                raise _RecErr(
                    "INVALID_FIELD", f"No such column '{k}' on sobject of type {obj}", [k]
                )
            spec = fs[name]
            if not spec[2]:
                if name == "Id" and not creating:
                    continue
                raise _RecErr(
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    f"Unable to create/update fields: {name}. Please check the security "
                    "settings of this field.",
                    [name],
                )
            if type(v) is str and v:
                pass
            elif v == "" or v is None:
                v = None
            elif spec[1] == "boolean":
                v = bool(v)
            elif isinstance(v, bool | int | float):
                v = str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
            elif not isinstance(v, str):
                raise _RecErr(
                    "INVALID_TYPE_ON_FIELD_IN_RECORD",
                    f"{name}: value not of required type: {v!r}",
                    [name],
                )
            if isinstance(v, str):
                if spec[6] and len(v) > spec[6]:
                    raise _RecErr(
                        "STRING_TOO_LONG",
                        f"{name}: data value too large: {v[:40]} (max length={spec[6]})",
                        [name],
                    )
                if spec[1] == "email" and ("@" not in v or " " in v):
                    raise _RecErr(
                        "INVALID_EMAIL_ADDRESS", f"{name}: invalid email address: {v}", [name]
                    )
            if v is None and not spec[3]:
                raise _RecErr(
                    "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{name}]", [name]
                )
            out[name] = v
        if creating:
            missing = [f for f in self.objects[obj][2] if out.get(f) is None]
            if obj == "Lead" and "Status" in missing:
                out["Status"] = "Open - Not Contacted"
                missing.remove("Status")
            if missing:
                raise _RecErr(
                    "REQUIRED_FIELD_MISSING",
                    f"Required fields are missing: [{', '.join(missing)}]",
                    missing,
                )
        return out

    def _check_unique(self, obj: str, values: Record, rid: str | None) -> None:
        ext = self.ext[obj]
        for fname in self.unique_ext[obj]:
            v = values.get(fname)
            if v is None:
                continue
            ids = ext[fname].get(v.lower())
            other = [i for i in ids if i != rid] if ids else None
            if other:
                raise _RecErr(
                    "DUPLICATE_VALUE",
                    f"duplicate value found: {fname} duplicates "
                    f"value on record with id: {other[0]}",
                    [fname],
                )

    def _insert(self, obj: str, values: Record) -> Record:
        self._check_unique(obj, values, None)
        self.seq += 1
        ts = now_text(self.clock)
        rec: Record = {
            **self.blank[obj], **values, "Id": sf_id(self.objects[obj][0], self.seq),
            "IsDeleted": False, "CreatedDate": ts, "LastModifiedDate": ts, "SystemModstamp": ts,
        }
        self.data[obj][rec["Id"]] = rec
        self._index(obj, None, rec)
        self.dirty = True
        return rec

    def _change(self, obj: str, old: Record, values: Record) -> Record:
        self._check_unique(obj, values, old["Id"])
        ts = now_text(self.clock)
        new = {**old, **values, "LastModifiedDate": ts, "SystemModstamp": ts}
        self.data[obj][new["Id"]] = new
        self._index(obj, old, new)
        self.dirty = True
        return new

    def _remove(self, obj: str, old: Record) -> None:
        ts = now_text(self.clock)
        new = {**old, "IsDeleted": True, "LastModifiedDate": ts, "SystemModstamp": ts}
        self.data[obj][new["Id"]] = new
        self._index(obj, old, new)
        self.dirty = True

    def _by_ext(self, obj: str, field: str, value: str) -> list[str]:
        name = field if field in self.fields[obj] else self.lower[obj].get(field.lower())
        if name is None or name not in self.ext[obj]:
            if name == "Id":
                rec = self.data[obj].get(value)
                return [value] if rec is not None and not rec["IsDeleted"] else []
            raise SfError(
                404,
                "NOT_FOUND",
                f"Provided external ID field does not exist or is not accessible: {field}",
            )
        return list(self.ext[obj][name].get(value.lower(), []))

    # ------------------------------------------------------------------ single-record API

    def list_sobjects(self, version: str) -> dict[str, Any]:
        return {
            "encoding": "UTF-8",
            "maxBatchSize": 200,
            "sobjects": [
                {
                    "name": o,
                    "label": o,
                    "keyPrefix": spec[0],
                    "queryable": True,
                    "createable": True,
                    "urls": {
                        "sobject": f"/services/data/{version}/sobjects/{o}",
                        "describe": f"/services/data/{version}/sobjects/{o}/describe",
                    },
                }
                for o, spec in self.objects.items()
            ],
        }

    def describe(self, obj: str) -> dict[str, Any]:
        required = self.objects[obj][2]
        return {
            "name": obj,
            "label": obj,
            "keyPrefix": self.objects[obj][0],
            "createable": True,
            "updateable": True,
            "deletable": True,
            "queryable": True,
            "fields": [
                {
                    "name": f[0],
                    "label": f[0],
                    "type": f[1],
                    "createable": f[2],
                    "updateable": f[2],
                    "nillable": f[3] and f[0] not in required,
                    "externalId": f[4],
                    "unique": f[5],
                    "length": f[6],
                }
                for f in self.fields[obj].values()
            ],
        }

    def create(self, obj: str, values: Record) -> Record:
        try:
            rec = self._insert(obj, self._clean(obj, values, True))
        except _RecErr as exc:
            raise SfError(400, exc.err["statusCode"], exc.err["message"]) from exc
        return {"id": rec["Id"], "success": True, "errors": []}

    def get(self, obj: str, rid: str, version: str, fields: str | None) -> Record:
        rec = self._find(obj, rid)
        names = (
            [self.lower[obj].get(f.strip().lower(), f) for f in fields.split(",")]
            if fields
            else None
        )
        return self.project(obj, rec, names, version)

    def get_or_none(self, obj: str, rid: str, version: str, fields: str | None) -> Record | None:
        try:
            return self.get(obj, rid, version, fields)
        except SfError:
            return None

    def get_by_ext(self, obj: str, field: str, value: str, version: str) -> Any:
        ids = self._by_ext(obj, field, value)
        if not ids:
            raise SfError(404, "NOT_FOUND", "The requested resource does not exist")
        if len(ids) > 1:
            raise SfError(300, "MULTIPLE_CHOICES", "More than one record found")
        return self.project(obj, self.data[obj][ids[0]], None, version)

    def update(self, obj: str, rid: str, values: Record) -> None:
        old = self._find(obj, rid)
        try:
            self._change(obj, old, self._clean(obj, values, False))
        except _RecErr as exc:
            raise SfError(400, exc.err["statusCode"], exc.err["message"]) from exc

    def delete(self, obj: str, rid: str) -> None:
        self._remove(obj, self._find(obj, rid))

    def upsert(self, obj: str, field: str, value: str, values: Record) -> Record:
        ids = self._by_ext(obj, field, value)
        if len(ids) > 1:
            raise SfError(300, "MULTIPLE_CHOICES", "More than one record found")
        name = field if field in self.fields[obj] else self.lower[obj][field.lower()]
        values = self.canonical(obj, values)
        try:
            if name != "Id" and values.get(name) != value:
                values = {**values, name: value}
            clean = self._clean(obj, values, not ids)
            if ids:
                rec = self._change(obj, self.data[obj][ids[0]], clean)
                return {"id": rec["Id"], "success": True, "errors": [], "created": False}
            rec = self._insert(obj, clean)
            return {"id": rec["Id"], "success": True, "errors": [], "created": True}
        except _RecErr as exc:
            return {"success": False, "errors": [exc.err], "created": False}

    def feed(self, obj: str, kind: str, start: str, end: str) -> dict[str, Any]:
        try:
            lo, hi = soql.ts_text(soql.parse_ts(start)), soql.ts_text(soql.parse_ts(end))
        except ValueError as exc:
            raise SfError(400, "INVALID_REPLICATION_DATE", "invalid start or end date") from exc
        rows = [r for r in self.data[obj].values() if lo <= r["SystemModstamp"] <= hi]
        if kind == "updated":
            return {"ids": [r["Id"] for r in rows if not r["IsDeleted"]], "latestDateCovered": hi}
        return {
            "deletedRecords": [
                {"id": r["Id"], "deletedDate": r["SystemModstamp"]} for r in rows if r["IsDeleted"]
            ],
            "earliestDateAvailable": lo,
            "latestDateCovered": hi,
        }

    # ------------------------------------------------------------------ collections

    def batch(
        self, op: str, obj: str | None, field: str | None, records: list[Any], all_or_none: bool
    ) -> list[Record]:
        if len(records) > 200:
            raise SfError(
                400,
                "EXCEEDED_ID_LIMIT",
                "record limit reached. cannot submit more than 200 records into this call",
            )
        snapshot = None
        if all_or_none:
            snapshot = (
                {o: dict(d) for o, d in self.data.items()},
                {
                    o: {f: {k: list(v) for k, v in ix.items()} for f, ix in e.items()}
                    for o, e in self.ext.items()
                },
                self.seq,
            )
        seen: dict[str, int] = {}
        if op == "upsert" and obj is not None and field is not None:
            name = self.lower[obj].get(field.lower(), field)
            records = [self.canonical(obj, r) if isinstance(r, dict) else r for r in records]
            for r in records:
                v = r.get(name) if isinstance(r, dict) else None
                if v is not None:
                    lv = str(v).lower()
                    seen[lv] = seen.get(lv, 0) + 1
        results: list[Record] = []
        for r in records:
            results.append(self._one(op, obj, field, r, seen))
        if snapshot is not None and not all(x["success"] for x in results):
            self.data, self.ext, self.seq = snapshot
            roll = {
                "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                "message": "Record "
                "rolled back because not all records were valid and the request was using "
                "AllOrNone header",
                "fields": [],
            }
            results = [
                {"id": None, "success": False, "errors": [roll]} if x["success"] else x
                for x in results
            ]
        return results

    def _one(
        self, op: str, obj: str | None, field: str | None, r: Any, seen: dict[str, int]
    ) -> Record:
        try:
            if not isinstance(r, dict):
                raise _RecErr("INVALID_INPUT", "Each record must be an object")
            if op == "delete":
                rid = str(next((v for k, v in r.items() if k.lower() == "id"), ""))
                for o in self.data:
                    rec = self.data[o].get(rid if len(rid) != 15 else with_checksum(rid))
                    if rec is not None:
                        if rec["IsDeleted"]:
                            raise _RecErr("ENTITY_IS_DELETED", "entity is deleted")
                        self._remove(o, rec)
                        return {"id": rec["Id"], "success": True, "errors": []}
                raise _RecErr("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")
            otype = obj or (r.get("attributes") or {}).get("type")
            if not isinstance(otype, str):
                raise _RecErr("INVALID_TYPE", "sObject type must be given in attributes")
            o = self.object_name(otype)
            r = self.canonical(o, r)
            if op == "create":
                rec = self._insert(o, self._clean(o, r, True))
                return {"id": rec["Id"], "success": True, "errors": []}
            if op == "update":
                rid = str(r.get("Id") or "")
                try:
                    old = self._find(o, rid)
                except SfError as exc:
                    raise _RecErr(
                        "ENTITY_IS_DELETED"
                        if exc.code == "ENTITY_IS_DELETED"
                        else "INVALID_ID_FIELD",
                        exc.message,
                    ) from exc
                rec = self._change(o, old, self._clean(o, r, False))
                return {"id": rec["Id"], "success": True, "errors": []}
            assert field is not None
            name = self.lower[o].get(field.lower(), field)
            value = r.get(name)
            if value is None:
                raise _RecErr("MISSING_ARGUMENT", f"{name} not specified", [name])
            if seen.get(str(value).lower(), 0) > 1:
                raise _RecErr(
                    "DUPLICATE_EXTERNAL_ID", f"Duplicate external id specified: {value}", [name]
                )
            res = self.upsert(o, name, str(value), r)
            return res
        except SfError as exc:
            return {
                "id": None,
                "success": False,
                "errors": [{"statusCode": exc.code, "message": exc.message, "fields": []}],
            }
        except _RecErr as exc:
            return {"id": None, "success": False, "errors": [exc.err]}

    # ------------------------------------------------------------------ user actions

    def push(self, obj: str, record: Record) -> Record:
        values = {_DEMO.get(k, k): v for k, v in record.items()}
        rid = values.pop("Id", None)
        try:
            if rid:
                old = self._find(obj, str(rid))
                rec = self._change(obj, old, self._clean(obj, values, False))
            else:
                ext = values.get("Record_Id__c")
                ids = self._by_ext(obj, "Record_Id__c", str(ext)) if ext is not None else []
                if ids:
                    rec = self._change(obj, self.data[obj][ids[0]], self._clean(obj, values, False))
                else:
                    rec = self._insert(obj, self._clean(obj, values, True))
        except _RecErr as exc:
            raise ValueError(exc.err["message"]) from exc
        return dict(rec)

    def user_delete(self, obj: str, key: str) -> bool:
        ids = [key] if key in self.data[obj] else self._by_ext(obj, "Record_Id__c", key)
        for rid in ids:
            rec = self.data[obj][rid]
            if not rec["IsDeleted"]:
                self._remove(obj, rec)
        return bool(ids)
