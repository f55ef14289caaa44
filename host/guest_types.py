"""An agent export's types, read from wasmtime once instead of at every value.

wasmtime-py converts component values generically: every record value asks the C API
for the record's field types again, every list value for its element type, every
option for its payload type; and a ``list<u8>`` is copied one byte at a time through
Python calls. For a call with 64 messages that is about 150 µs per message, and a
64 KiB agent state adds about 85 ms to every call.

:func:`resolve_types` walks an export's signature once and pins each record's fields,
each list's element, each tuple's elements and each option's payload on the type
objects themselves, so wasmtime-py's own conversion code runs without the lookups; a
``list<u8>`` gets a bulk copy instead. This leans on wasmtime-py's type classes and its
value layout (``wasmtime._ffi``), which is why the dependency is held to one major
version; ``tests/test_guest_types.py`` checks every value of the contract against
wasmtime-py's generic path.
"""

from __future__ import annotations

import ctypes
from typing import Any, Final, Protocol, runtime_checkable

from wasmtime import _ffi as ffi
from wasmtime._store import Storelike
from wasmtime.component import (
    U8,
    Func,
    FuncType,
    ListType,
    OptionType,
    RecordType,
    TupleType,
    ValType,
)
from wasmtime.component._enter import enter_wasm

from agora.core.errors import AgoraError
from agora.host.guest_records import (
    CELL,
    KIND_AT,
    FlatRecord,
    FlatRecordList,
    RecordLayout,
    ReturnLimits,
    flat_fields,
    write_list_cell,
)

_U8_AT: Final[int] = (
    ffi.wasmtime_component_val_t.of.offset + ffi.wasmtime_component_valunion.u8.offset  # type: ignore[attr-defined]
)
_U8_KIND: Final = bytes([ffi.WASMTIME_COMPONENT_U8.value])


class ListTooLong(AgoraError):
    """A guest returned a ``list<u8>`` longer than the host takes. It was not copied."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"a list of {length} bytes; the limit is {limit}")
        self.length = length
        self.limit = limit


def resolve_types(
    func: Func,
    store: Storelike,
    *,
    max_bytes: int | None = None,
    returns: ReturnLimits | None = None,
) -> None:
    """Make ``func`` convert its parameters and result with types read once, now.

    A ``list<u8>`` the guest returns that is longer than ``max_bytes`` raises
    :class:`ListTooLong`, and a list of records past ``returns`` raises
    :class:`~agora.host.guest_records.ReturnedTooMuch`, before it is copied into
    Python."""
    signature = func.type(store)
    params = [(name, _resolved(ty, max_bytes, returns)) for name, ty in signature.params]
    result = signature.result
    signature.__class__ = _ResolvedFuncType
    resolved_result = None if result is None else _resolved(result, max_bytes, returns)
    signature.resolved = (params, resolved_result)  # type: ignore[attr-defined]
    signature.lenders = [ty if isinstance(ty, Lending) else None for _, ty in params]  # type: ignore[attr-defined]
    func.__class__ = _ResolvedFunc
    func.signature = signature  # type: ignore[attr-defined]


def _resolved(ty: ValType, max_bytes: int | None, returns: ReturnLimits | None) -> ValType:
    if isinstance(ty, ListType):
        element = _resolved(ty.element, max_bytes, returns)
        if isinstance(element, U8):
            ty.__class__ = _Bytes
            ty.limit = max_bytes  # type: ignore[attr-defined]
        elif isinstance(element, FlatRecord):
            ty.__class__ = FlatRecordList
            ty.limits = returns  # type: ignore[attr-defined]
        else:
            ty.__class__ = _List
        ty.resolved = element  # type: ignore[attr-defined]
    elif isinstance(ty, RecordType):
        fields = [(name, _resolved(field, max_bytes, returns)) for name, field in ty.fields]
        ty.__class__ = _Record
        ty.resolved = fields  # type: ignore[attr-defined]
        flat = flat_fields(ty)
        if flat is not None:
            ty.__class__ = FlatRecord
            ty.flat = flat  # type: ignore[attr-defined]
            ty.layout = RecordLayout(flat)  # type: ignore[attr-defined]
    elif isinstance(ty, TupleType):
        elements = [_resolved(element, max_bytes, returns) for element in ty.elements]
        ty.__class__ = _Tuple
        ty.resolved = elements  # type: ignore[attr-defined]
    elif isinstance(ty, OptionType):
        payload = _resolved(ty.payload, max_bytes, returns)
        ty.__class__ = _Option
        ty.resolved = payload  # type: ignore[attr-defined]
    return ty  # anything else converts as wasmtime-py does it (slower, still right)


class _ResolvedFunc(Func):
    signature: _ResolvedFuncType

    def type(self, store: Storelike) -> FuncType:  # the same for every store
        return self.signature

    def __call__(self, store: Storelike, *params: Any) -> Any:
        """Call with each argument lent from memory Python owns where its type can lend
        it (the C API only reads arguments), else converted into the C API's memory
        and deleted after the call, as wasmtime-py does."""
        signature = self.signature
        types = signature.params
        if len(params) != len(types):
            raise TypeError(f"{len(params)} arguments given; the function takes {len(types)}")
        cells = (ffi.wasmtime_component_val_t * len(params))()
        lent: list[object] = []  # kept alive until the call has returned
        owned: list[int] = []
        try:
            for index, ((_, ty), lender, value) in enumerate(
                zip(types, signature.lenders, params, strict=True)
            ):
                if lender is not None:
                    lent.append(lender.lend(value, ctypes.addressof(cells) + index * CELL))
                else:
                    ty.convert_to_c(store, value, ctypes.pointer(cells[index]))
                    owned.append(index)
            result_type = signature.result
            result = ffi.wasmtime_component_val_t()
            result_at = None if result_type is None else ctypes.byref(result)
            enter_wasm(
                lambda: ffi.wasmtime_component_func_call(
                    ctypes.byref(self._func),
                    store._context(),
                    cells,
                    len(params),
                    result_at,
                    0 if result_at is None else 1,
                )
            )
            return None if result_type is None else result_type.convert_from_c(result)
        finally:
            for index in owned:
                ffi.wasmtime_component_val_delete(ctypes.byref(cells[index]))


class _ResolvedFuncType(FuncType):
    resolved: tuple[list[tuple[str, ValType]], ValType | None]
    lenders: list[Lending | None]  # each parameter's type, if it can lend its value

    @property
    def params(self) -> list[tuple[str, ValType]]:
        return self.resolved[0]

    @property
    def result(self) -> ValType | None:
        return self.resolved[1]


class _Record(RecordType):
    resolved: list[tuple[str, ValType]]

    @property
    def fields(self) -> list[tuple[str, ValType]]:
        return self.resolved


class _List(ListType):
    resolved: ValType

    @property
    def element(self) -> ValType:
        return self.resolved


class _Tuple(TupleType):
    resolved: list[ValType]

    @property
    def elements(self) -> list[ValType]:
        return self.resolved


class _Option(OptionType):
    resolved: ValType

    @property
    def payload(self) -> ValType:
        return self.resolved

    def convert_to_c(
        self, store: Storelike, val: Any, ptr: ctypes._Pointer[ffi.wasmtime_component_val_t]
    ) -> None:
        # wasmtime-py tells the cases apart through one module-wide set, which agents
        # calling from several threads at once would share; None is simply `none` here
        # (nested options, where that is ambiguous, keep wasmtime-py's way).
        if isinstance(self.resolved, OptionType):
            super().convert_to_c(store, val, ptr)
            return
        some = None
        if val is not None:
            cell = ffi.wasmtime_component_val_t()
            self.resolved.convert_to_c(store, val, ctypes.pointer(cell))
            some = ffi.wasmtime_component_val_new(ctypes.byref(cell))
        ptr.contents.kind = ffi.WASMTIME_COMPONENT_OPTION
        ptr.contents.of.option = some


class _Bytes(_List):
    """``list<u8>`` as ``bytes``, copied in bulk: the cells are built in one buffer.

    The C API hands a returned list over as one 32-byte cell per byte, so one past
    ``limit`` is refused before that is copied once more."""

    limit: int | None

    def lend(self, val: Any, cell: int) -> ctypes.Array[ctypes.c_char]:
        """Write the bytes into the argument cell at address ``cell`` as a list whose
        cells are in a buffer Python owns (returned: it must outlive the call)."""
        cells = _u8_cells(val)
        buffer = (ctypes.c_char * len(cells)).from_buffer(cells)
        write_list_cell(cell, len(val), ctypes.addressof(buffer))
        return buffer

    def convert_from_c(self, c: ffi.wasmtime_component_val_t) -> Any:
        if c.kind != ffi.WASMTIME_COMPONENT_LIST.value:
            raise AgoraError(f"expected a list<u8> value, got value kind {c.kind}")
        try:
            count = c.of.list.size
            if not count:
                return b""
            if self.limit is not None and count > self.limit:
                raise ListTooLong(count, self.limit)
            cells = ctypes.string_at(c.of.list.data, count * CELL)
            if cells[KIND_AT::CELL] != _U8_KIND * count:
                raise AgoraError("a list<u8> value holds something other than u8")
            return cells[_U8_AT::CELL]
        finally:
            ffi.wasmtime_component_vallist_delete(ctypes.byref(c.of.list))


def _u8_cells(val: Any) -> bytearray:
    """The cells of a ``list<u8>`` holding ``val`` (at least one cell's room, so even an
    empty list has an address)."""
    if not isinstance(val, bytes):
        raise TypeError("expected bytes value")
    cells = bytearray(max(len(val), 1) * CELL)
    if val:
        cells[KIND_AT::CELL] = _U8_KIND * len(val)
        cells[_U8_AT::CELL] = val
    return cells


@runtime_checkable
class Lending(Protocol):
    """A type that can write a value as an argument without the C API's memory."""

    def lend(self, val: Any, cell: int) -> object: ...
