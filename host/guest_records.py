"""Records of plain fields, and lists of them, converted in bulk.

A ``message`` is a record of strings, an enum, an ``option<string>`` and a ``u8``; an
inbox or an outbox is a list of them. wasmtime-py converts each field through several
ctypes objects and calls (a fresh ``wasm_byte_vec_t``, an array type, a copy, a
pointer), about 60 µs per message both ways, and each call lets go of the GIL and
takes it again, which the event loop's thread is waiting for.

An inbox goes in without one call to the C API: ``wasmtime_component_func_call`` only
reads its arguments (it copies each into a value of its own before the call), so
:meth:`FlatRecordList.lend` lays the whole list out (cells, record entries, boxed
options, and every string's bytes) in one buffer Python owns, which the call reads and
Python frees; nothing in it is ever handed to the C API's delete. A returned list is
the C API's own: it is read with one copy of its cells, one of each record's entries
and one per string, and freed by one delete at the end.

Only records whose every field is a string, an enum, an unsigned integer or an
``option<string>`` take this path (:func:`flat_fields`); any other converts as
wasmtime-py does it. ``tests/test_guest_types.py`` checks both against wasmtime-py.
"""

from __future__ import annotations

import ctypes
import struct
import sys
from dataclasses import dataclass
from typing import Any, Final

from wasmtime import _ffi as ffi
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
_TEXT_KINDS: Final = frozenset({_STRING, _ENUM, _OPTIONAL_STRING})


_VEC_CELL: Final = struct.Struct(f"@B{_UNION_AT - 1}xNP{CELL - _UNION_AT - _VEC.size}x")
"""A value cell of a string, a list or a record: its kind, then a size and an address."""
_LAYOUT_KNOWN: Final = (
    _NAME_AT == 0 and KIND_AT == 0 and _VEC.size == _VALUE_AT and _VEC_CELL.size == CELL
)


@dataclass(frozen=True, slots=True)
class ReturnLimits:
    """The most a list of records a guest returns may hold, checked before any of it is
    copied into Python: ``items`` records, ``text`` bytes in one string, ``total``
    bytes of strings in all."""

    items: int
    text: int
    total: int


class ReturnedTooMuch(AgoraError):
    """A guest returned more than :class:`ReturnLimits` allows. Nothing was copied."""


class _Budget:
    """What is left of a returned list's :class:`ReturnLimits` as its strings are read."""

    __slots__ = ("left", "limits")

    def __init__(self, limits: ReturnLimits) -> None:
        self.limits = limits
        self.left = limits.total

    def take(self, name: str, size: int) -> None:
        if size > self.limits.text:
            raise ReturnedTooMuch(
                f"a {name} of {size} bytes in one call; the limit is {self.limits.text}"
            )
        self.left -= size
        if self.left < 0:
            raise ReturnedTooMuch(
                f"more than {self.limits.total} bytes of text in one call; that is the limit"
            )


def _c_function(name: str, argtypes: list[Any], restype: Any = None) -> Any:
    # Called with the GIL held (a free is quick; letting go of the GIL and taking it
    # back would make the agent's thread wait for the event loop's).
    return ctypes.PYFUNCTYPE(restype, *argtypes)((name, ffi.dll))


_delete_list = _c_function("wasmtime_component_vallist_delete", [ctypes.c_void_p])
_delete_record = _c_function("wasmtime_component_valrecord_delete", [ctypes.c_void_p])


def flat_fields(record: RecordType) -> list[tuple[str, int, int]] | None:
    """Each field as (name, kind, width), or None when a field is not plain (or this
    wasmtime lays values out in a way this module does not know)."""
    if not _LAYOUT_KNOWN:
        return None
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


def _entry_format(kind: int, width: int) -> str:
    """One record entry: the field's name (size, address), then its value cell."""
    if kind in (_STRING, _ENUM):
        union, used = "NP", _VEC.size
    elif kind == _OPTIONAL_STRING:
        union, used = "P", _POINTER.size  # the boxed `some` value's address, or null
    else:
        union, used = f"{width}s", width
    return f"NP{_VALUE_AT - _VEC.size}xB{_UNION_AT - 1}x{union}{CELL - _UNION_AT - used}x"


class FlatRecord(RecordType):
    """A record of plain fields (see :func:`flat_fields`), converted in bulk."""

    resolved: list[tuple[str, ValType]]
    flat: list[tuple[str, int, int]]
    layout: RecordLayout

    @property
    def fields(self) -> list[tuple[str, ValType]]:
        return self.resolved

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

    def lift(self, size: int, entries: int, budget: _Budget | None = None) -> Record:
        """The record whose ``size`` entries start at address ``entries`` (not freed),
        its strings counted against ``budget`` before each is copied."""
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
                values[name] = None if not boxed else _lift_boxed_string(name, boxed, budget)
            elif found != kind:
                raise AgoraError(f"field {name!r}: expected value kind {kind}, got {found}")
            elif kind in (_STRING, _ENUM):
                size, data = _VEC.unpack_from(raw, union)
                values[name] = _text(name, size, data, budget)
            else:
                values[name] = int.from_bytes(raw[union : union + width], sys.byteorder)
        return record


class FlatRecordList(ListType):
    """A list of :class:`FlatRecord` values, converted in bulk; one returned is held to
    ``limits`` (if set) before it is copied."""

    resolved: FlatRecord
    limits: ReturnLimits | None = None

    @property
    def element(self) -> ValType:
        return self.resolved

    def lend(self, val: Any, cell: int) -> ctypes.Array[ctypes.c_char]:
        """Write the list into the argument cell at address ``cell``, every part of it
        in one buffer Python owns (returned: it must outlive the call, and is never
        handed to the C API's delete). Raises before anything is written."""
        if not isinstance(val, (list, tuple)):
            raise TypeError("expected a list value")
        element = self.resolved
        return element.layout.lay_out([element.encode(item) for item in val], cell)

    def convert_from_c(self, c: ffi.wasmtime_component_val_t) -> Any:
        if c.kind != _LIST:
            raise AgoraError(f"expected a list value, got value kind {c.kind}")
        address = ctypes.addressof(c) + _UNION_AT
        try:
            count, cells = _VEC.unpack(ctypes.string_at(address, _VEC.size))
            limits = self.limits
            if limits is not None and count > limits.items:
                raise ReturnedTooMuch(f"{count} messages in one call; the limit is {limits.items}")
            budget = None if limits is None else _Budget(limits)
            raw = ctypes.string_at(cells, count * CELL) if count else b""
            lifted: list[Record] = []
            for index in range(count):
                at = index * CELL
                if raw[at + KIND_AT] != _RECORD:
                    raise AgoraError(f"expected a record value, got kind {raw[at + KIND_AT]}")
                size, entries = _VEC.unpack_from(raw, at + _UNION_AT)
                lifted.append(self.resolved.lift(size, entries, budget))
            return lifted
        finally:
            _delete_list(address)


def _view(address: int, size: int) -> memoryview:
    return memoryview((ctypes.c_char * size).from_address(address)).cast("B")


def _lift_boxed_string(name: str, boxed: int, budget: _Budget | None) -> str:
    raw = ctypes.string_at(boxed, CELL)
    if raw[KIND_AT] != _STRING:
        raise AgoraError(f"field {name!r}: expected an option of a string, got {raw[KIND_AT]}")
    size, data = _VEC.unpack_from(raw, _UNION_AT)
    return _text(name, size, data, budget)


def _text(name: str, size: int, data: int, budget: _Budget | None) -> str:
    """The string field ``name`` of ``size`` bytes at ``data``, counted against
    ``budget`` before it is copied."""
    if budget is not None:
        budget.take(name, size)
    return ctypes.string_at(data, size).decode("utf-8") if size else ""


class RecordLayout:
    """How a list of one kind of flat record is laid out in a buffer of its own:
    the records' entries, then the list's cells, then the boxed ``some`` values of
    its options, then the bytes of all its strings, one after another."""

    def __init__(self, flat: list[tuple[str, int, int]]) -> None:
        names = [name.encode() for name, _, _ in flat]
        self._names = ctypes.create_string_buffer(b"".join(names))  # shared by every record
        address = ctypes.addressof(self._names)
        self._fields: list[tuple[int, int, int, int]] = []  # name size, address, C kind, kind
        for (_, kind, _width), name in zip(flat, names, strict=True):
            c_kind = _OPTION if kind == _OPTIONAL_STRING else kind
            self._fields.append((len(name), address, c_kind, kind))
            address += len(name)
        self._record = struct.Struct("@" + "".join(_entry_format(k, w) for _, k, w in flat))
        if self._record.size != len(flat) * _ENTRY:
            raise AgoraError(
                f"a record's entries take {self._record.size} bytes, not "
                f"{len(flat) * _ENTRY}: this wasmtime lays them out differently"
            )
        self._texts = [i for i, (_, kind, _) in enumerate(flat) if kind in _TEXT_KINDS]
        self._options = [i for i, (_, kind, _) in enumerate(flat) if kind == _OPTIONAL_STRING]

    def lay_out(self, records: list[list[Any]], cell: int) -> ctypes.Array[ctypes.c_char]:
        """Write encoded ``records`` (see :meth:`FlatRecord.encode`) as a list value
        into the cell at address ``cell``; returns the buffer that holds it."""
        count = len(records)
        boxes = sum(values[i] is not None for values in records for i in self._options)
        text = sum(len(values[i] or b"") for values in records for i in self._texts)
        cells_at = count * self._record.size
        boxes_at = cells_at + count * CELL
        text_at = boxes_at + boxes * CELL
        buffer = (ctypes.c_char * max(text_at + text, CELL))()
        base = ctypes.addressof(buffer)
        view = memoryview(buffer).cast("B")
        text_address = base + text_at  # where the next string's bytes go
        box_at = boxes_at
        pieces: list[bytes] = []
        pack_record = self._record.pack_into
        for index, values in enumerate(records):
            fields: list[Any] = []
            for (name_size, name_address, c_kind, kind), value in zip(
                self._fields, values, strict=True
            ):
                fields += (name_size, name_address, c_kind)
                if kind == _OPTIONAL_STRING:
                    if value is None:
                        fields.append(0)  # none
                        continue
                    _VEC_CELL.pack_into(view, box_at, _STRING, len(value), text_address)
                    fields.append(base + box_at)
                    box_at += CELL
                elif kind not in _TEXT_KINDS:
                    fields.append(value)  # an integer's bytes
                    continue
                else:
                    fields += (len(value), text_address)
                pieces.append(value)
                text_address += len(value)
            record_at = index * self._record.size
            pack_record(view, record_at, *fields)
            _VEC_CELL.pack_into(
                view, cells_at + index * CELL, _RECORD, len(self._fields), base + record_at
            )
        view[text_at : text_at + text] = b"".join(pieces)
        write_list_cell(cell, count, base + cells_at)
        return buffer


def write_list_cell(cell: int, count: int, cells: int) -> None:
    """Make the value cell at address ``cell`` a list of ``count`` values at ``cells``."""
    _VEC_CELL.pack_into(_view(cell, CELL), 0, _LIST, count, cells)
