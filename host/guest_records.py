"""Records of plain fields, and lists of them, converted in bulk.

A ``message`` is a record of strings, an enum, an ``option<string>`` and a ``u8``; an
inbox or an outbox is a list of them. wasmtime-py converts each field through several
ctypes objects and calls (a fresh ``wasm_byte_vec_t``, an array type, a copy, a
pointer), about 60 µs per message both ways. Here a record's fields are checked and
encoded first, then written straight into the memory the C API allocated: one call per
string (the C API owns every string it is handed, so each is allocated there) and plain
byte writes for the kinds and numbers. Reading back takes one copy of the record's
entries and one per string. The whole value is freed by one delete at the end, as the
C API's own conversion does.

Only records whose every field is a string, an enum, an unsigned integer or an
``option<string>`` take this path (:func:`flat_fields`); any other converts as
wasmtime-py does it. ``tests/test_guest_types.py`` checks both against wasmtime-py.
"""

from __future__ import annotations

import ctypes
import struct
import sys
from typing import Any, Final

from wasmtime import _ffi as ffi
from wasmtime._store import Storelike
from wasmtime.component import (
    U8,
    U16,
    U32,
    U64,
    EnumType,
    ListType,
    OptionType,
    Record,
    RecordType,
    String,
    ValType,
)

from agora.core.errors import AgoraError

CELL: Final = ctypes.sizeof(ffi.wasmtime_component_val_t)
KIND_AT: Final[int] = ffi.wasmtime_component_val_t.kind.offset
_UNION_AT: Final[int] = ffi.wasmtime_component_val_t.of.offset
_ENTRY: Final = ctypes.sizeof(ffi.wasmtime_component_valrecord_entry)
_NAME_AT: Final[int] = ffi.wasmtime_component_valrecord_entry.name.offset
_VALUE_AT: Final[int] = ffi.wasmtime_component_valrecord_entry.val.offset
_VEC: Final = struct.Struct("@NP")  # wasm_byte_vec_t, valrecord_t and vallist_t: size, data
_POINTER: Final = struct.Struct("@P")

_STRING: Final[int] = ffi.WASMTIME_COMPONENT_STRING.value
_ENUM: Final[int] = ffi.WASMTIME_COMPONENT_ENUM.value
_OPTION: Final[int] = ffi.WASMTIME_COMPONENT_OPTION.value
_RECORD: Final[int] = ffi.WASMTIME_COMPONENT_RECORD.value
_LIST: Final[int] = ffi.WASMTIME_COMPONENT_LIST.value
_UNSIGNED: Final = {
    U8: (ffi.WASMTIME_COMPONENT_U8.value, 1),
    U16: (ffi.WASMTIME_COMPONENT_U16.value, 2),
    U32: (ffi.WASMTIME_COMPONENT_U32.value, 4),
    U64: (ffi.WASMTIME_COMPONENT_U64.value, 8),
}
_OPTIONAL_STRING: Final = -1  # not a C kind: an option<string> field


def _c_function(name: str, argtypes: list[Any], restype: Any = None) -> Any:
    # A function object of our own: wasmtime-py's (shared, cached on the library)
    # keep their argument types.
    function = ffi.dll[name]
    function.argtypes = argtypes
    function.restype = restype
    return function


_new_bytes = _c_function("wasm_byte_vec_new", [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p])
_new_boxed = _c_function("wasmtime_component_val_new", [ctypes.c_void_p], ctypes.c_void_p)
_new_record = _c_function(
    "wasmtime_component_valrecord_new_uninit", [ctypes.c_void_p, ctypes.c_size_t]
)
_new_list = _c_function("wasmtime_component_vallist_new_uninit", [ctypes.c_void_p, ctypes.c_size_t])
_delete_list = _c_function("wasmtime_component_vallist_delete", [ctypes.c_void_p])
_delete_record = _c_function("wasmtime_component_valrecord_delete", [ctypes.c_void_p])


def flat_fields(record: RecordType) -> list[tuple[str, int, int]] | None:
    """Each field as (name, kind, width), or None when a field is not plain."""
    fields: list[tuple[str, int, int]] = []
    for name, ty in record.fields:
        kind = _plain_kind(ty)
        if kind is None:
            return None
        fields.append((name, *kind))
    return fields


def _plain_kind(ty: ValType) -> tuple[int, int] | None:
    if isinstance(ty, String):
        return _STRING, 0
    if isinstance(ty, EnumType):
        return _ENUM, 0
    if isinstance(ty, OptionType) and isinstance(ty.payload, String):
        return _OPTIONAL_STRING, 0
    return _UNSIGNED.get(type(ty))


class FlatRecord(RecordType):
    """A record of plain fields (see :func:`flat_fields`), converted in bulk."""

    resolved: list[tuple[str, ValType]]
    flat: list[tuple[str, int, int]]
    names: list[bytes]

    @property
    def fields(self) -> list[tuple[str, ValType]]:
        return self.resolved

    def convert_to_c(
        self, store: Storelike, val: Any, ptr: ctypes._Pointer[ffi.wasmtime_component_val_t]
    ) -> None:
        values = self.encode(val)
        cell = ctypes.addressof(ptr.contents)
        self.lower(values, cell, _view(cell, CELL), 0)

    def convert_from_c(self, c: ffi.wasmtime_component_val_t) -> Any:
        if c.kind != _RECORD:
            raise AgoraError(f"expected a record value, got value kind {c.kind}")
        address = ctypes.addressof(c) + _UNION_AT
        try:
            return self.lift(*_VEC.unpack(ctypes.string_at(address, _VEC.size)))
        finally:
            _delete_record(address)

    def encode(self, val: Any) -> list[Any]:
        """The fields' values, checked and ready to write; raises before any is written."""
        values: list[Any] = []
        for name, kind, width in self.flat:
            value = getattr(val, name)
            if kind == _OPTIONAL_STRING:
                if value is not None and not isinstance(value, str):
                    raise TypeError(f"field {name!r}: expected a string or None")
                values.append(None if value is None else value.encode())
            elif kind in (_STRING, _ENUM):
                if not isinstance(value, str):
                    raise TypeError(f"field {name!r}: expected a string")
                values.append(value.encode())
            else:
                if not isinstance(value, int) or not 0 <= value < 1 << (8 * width):
                    raise TypeError(f"field {name!r}: expected an integer of {width} bytes")
                values.append(value.to_bytes(width, sys.byteorder))
        return values

    def lower(self, values: list[Any], cell: int, view: memoryview, at: int) -> None:
        """Write an encoded record into the value cell at address ``cell`` (``view``
        covers the cell from offset ``at``)."""
        _new_record(cell + _UNION_AT, len(values))
        entries = _VEC.unpack_from(view, at + _UNION_AT)[1]
        fields = _view(entries, len(values) * _ENTRY)
        for index, ((_, kind, _width), name, value) in enumerate(
            zip(self.flat, self.names, values, strict=True)
        ):
            entry = entries + index * _ENTRY
            _new_bytes(entry + _NAME_AT, len(name), name)
            kind_at = index * _ENTRY + _VALUE_AT + KIND_AT
            union = entry + _VALUE_AT + _UNION_AT
            if kind == _OPTIONAL_STRING:
                fields[kind_at] = _OPTION
                boxed = 0 if value is None else _boxed_string(value)
                _POINTER.pack_into(fields, index * _ENTRY + _VALUE_AT + _UNION_AT, boxed)
            elif kind in (_STRING, _ENUM):
                fields[kind_at] = kind
                _new_bytes(union, len(value), value)
            else:
                fields[kind_at] = kind
                start = index * _ENTRY + _VALUE_AT + _UNION_AT
                fields[start : start + len(value)] = value
        view[at + KIND_AT] = _RECORD

    def lift(self, size: int, entries: int) -> Record:
        """The record whose ``size`` entries start at address ``entries`` (not freed)."""
        if size != len(self.flat):
            raise AgoraError(f"expected a record of {len(self.flat)} fields, got {size}")
        raw = ctypes.string_at(entries, size * _ENTRY)
        record = Record()
        values = record.__dict__
        for index, (name, kind, width) in enumerate(self.flat):
            at = index * _ENTRY + _VALUE_AT
            found = raw[at + KIND_AT]
            union = at + _UNION_AT
            if kind == _OPTIONAL_STRING:
                if found != _OPTION:
                    raise AgoraError(f"field {name!r}: expected an option, got kind {found}")
                boxed = _POINTER.unpack_from(raw, union)[0]
                values[name] = None if not boxed else _lift_boxed_string(name, boxed)
            elif found != kind:
                raise AgoraError(f"field {name!r}: expected value kind {kind}, got {found}")
            elif kind in (_STRING, _ENUM):
                values[name] = _text(*_VEC.unpack_from(raw, union))
            else:
                values[name] = int.from_bytes(raw[union : union + width], sys.byteorder)
        return record


class FlatRecordList(ListType):
    """A list of :class:`FlatRecord` values, converted in bulk."""

    resolved: FlatRecord

    @property
    def element(self) -> ValType:
        return self.resolved

    def convert_to_c(
        self, store: Storelike, val: Any, ptr: ctypes._Pointer[ffi.wasmtime_component_val_t]
    ) -> None:
        if not isinstance(val, (list, tuple)):
            raise TypeError("expected a list value")
        element = self.resolved
        encoded = [element.encode(item) for item in val]
        cell = ctypes.addressof(ptr.contents)
        _new_list(cell + _UNION_AT, len(encoded))
        if encoded:
            cells = _VEC.unpack(ctypes.string_at(cell + _UNION_AT, _VEC.size))[1]
            view = _view(cells, len(encoded) * CELL)
            for index, values in enumerate(encoded):
                element.lower(values, cells + index * CELL, view, index * CELL)
        ptr.contents.kind = _LIST

    def convert_from_c(self, c: ffi.wasmtime_component_val_t) -> Any:
        if c.kind != _LIST:
            raise AgoraError(f"expected a list value, got value kind {c.kind}")
        address = ctypes.addressof(c) + _UNION_AT
        try:
            count, cells = _VEC.unpack(ctypes.string_at(address, _VEC.size))
            raw = ctypes.string_at(cells, count * CELL) if count else b""
            lifted: list[Record] = []
            for index in range(count):
                at = index * CELL
                if raw[at + KIND_AT] != _RECORD:
                    raise AgoraError(f"expected a record value, got kind {raw[at + KIND_AT]}")
                lifted.append(self.resolved.lift(*_VEC.unpack_from(raw, at + _UNION_AT)))
            return lifted
        finally:
            _delete_list(address)


def _view(address: int, size: int) -> memoryview:
    return memoryview((ctypes.c_char * size).from_address(address)).cast("B")


def _boxed_string(value: bytes) -> int:
    cell = (ctypes.c_char * CELL)()
    cell[KIND_AT] = bytes([_STRING])
    _new_bytes(ctypes.addressof(cell) + _UNION_AT, len(value), value)
    boxed: int = _new_boxed(ctypes.addressof(cell))  # takes the string over
    return boxed


def _lift_boxed_string(name: str, boxed: int) -> str:
    raw = ctypes.string_at(boxed, CELL)
    if raw[KIND_AT] != _STRING:
        raise AgoraError(f"field {name!r}: expected an option of a string, got {raw[KIND_AT]}")
    return _text(*_VEC.unpack_from(raw, _UNION_AT))


def _text(size: int, data: int) -> str:
    return ctypes.string_at(data, size).decode("utf-8") if size else ""
