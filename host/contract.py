"""What the host reads of an agent's ``handle`` export, checked when the agent is loaded.

``wit/agent.wit`` is the contract, and componentize-py builds every agent against it;
but a component can be made otherwise (by hand, in WAT), with a ``handle`` of another
shape. The host fills the parameters and reads the outcome by the contract's types
(``host/guest_records.py`` writes and reads them by hand), so a ``handle`` whose type
differs from the contract's anywhere (a field of another type, another order, a missing
or extra field, another enum) is refused when the agent starts (a fault, like any
other: the agent is quarantined), never found out in the middle of a batch, where a
``state`` of strings or a ``wake-at-ms`` of floats would reach the host's own code.

The contract's types are written out below as :data:`HANDLE_PARAMETERS` and
:data:`OUTCOME`: every shipped agent, built from the WIT file, is checked against them
as it loads, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from wasmtime.component import (
    EnumType,
    FuncType,
    ListType,
    OptionType,
    RecordType,
    TupleType,
    ValType,
)
from wasmtime.component._types import U8, U64, String

from agora.core.acts import Performative


@dataclass(frozen=True)
class Plain:
    """A type with no parts (``string``, ``u8``, ``u64``)."""

    name: str
    kind: type[ValType]


@dataclass(frozen=True)
class ListOf:
    element: Shape


@dataclass(frozen=True)
class OptionOf:
    payload: Shape


@dataclass(frozen=True)
class TupleOf:
    elements: tuple[Shape, ...]


@dataclass(frozen=True)
class Record:
    fields: tuple[tuple[str, Shape], ...]


@dataclass(frozen=True)
class Enum:
    names: tuple[str, ...]


Shape = Plain | ListOf | OptionOf | TupleOf | Record | Enum

STRING: Final = Plain("string", String)
BYTE: Final = Plain("u8", U8)
U64_: Final = Plain("u64", U64)

MESSAGE: Final = Record(
    (
        ("id", STRING),
        ("conversation-id", STRING),
        ("in-reply-to", OptionOf(STRING)),
        ("sender", STRING),
        ("channel", STRING),
        ("act", Enum(tuple(p.value for p in Performative))),
        ("payload", STRING),
        ("hops", BYTE),
    )
)
CONTEXT: Final = Record(
    (
        ("agent", STRING),
        ("channels", ListOf(STRING)),
        ("now-ms", U64_),
        ("settings", ListOf(TupleOf((STRING, STRING)))),
    )
)
HANDLE_PARAMETERS: Final[tuple[tuple[str, Shape], ...]] = (
    ("ctx", CONTEXT),
    ("state", ListOf(BYTE)),
    ("inbox", ListOf(MESSAGE)),
)
MESSAGE_FIELDS: Final = tuple(name for name, _ in MESSAGE.fields)
OUTCOME: Final = Record(
    (("outbox", ListOf(MESSAGE)), ("state", ListOf(BYTE)), ("wake-at-ms", OptionOf(U64_)))
)


def contract_problem(handle: FuncType) -> str | None:
    """What in ``handle``'s type differs from the contract's, or None."""
    params = handle.params
    if len(params) != len(HANDLE_PARAMETERS):
        return (
            f"its handle takes {len(params)} parameters; the contract has {len(HANDLE_PARAMETERS)}"
        )
    for (_, actual), (name, expected) in zip(params, HANDLE_PARAMETERS, strict=True):
        problem = _difference(actual, expected, f"its handle's parameter {name}")
        if problem is not None:
            return problem
    if handle.result is None:
        return f"its handle returns nothing; the contract has {shown(OUTCOME)}"
    return _difference(handle.result, OUTCOME, "its handle's outcome")


def _difference(actual: ValType, expected: Shape, where: str) -> str | None:
    """Where ``actual`` first differs from ``expected``, said in words, or None."""
    if not _same_outline(actual, expected):
        return f"{where} is {_named(actual)}; the contract has {shown(expected)}"
    for part, shape, label in _parts(actual, expected):
        problem = _difference(part, shape, f"{where}'s {label}")
        if problem is not None:
            return problem
    return None


def _same_outline(actual: ValType, expected: Shape) -> bool:
    """Whether ``actual`` is of ``expected``'s kind, with its fields, cases or arity."""
    match expected:
        case Plain(kind=kind):
            return isinstance(actual, kind)
        case ListOf():
            return isinstance(actual, ListType)
        case OptionOf():
            return isinstance(actual, OptionType)
        case TupleOf(elements=elements):
            return isinstance(actual, TupleType) and len(actual.elements) == len(elements)
        case Record(fields=fields):
            names = tuple(name for name, _ in fields)
            return isinstance(actual, RecordType) and _field_names(actual) == names
        case Enum(names=names):
            return isinstance(actual, EnumType) and tuple(actual.names) == names


def _parts(actual: ValType, expected: Shape) -> list[tuple[ValType, Shape, str]]:
    """The parts of ``actual`` (of ``expected``'s outline) beside the contract's."""
    match actual, expected:
        case ListType(), ListOf(element=element):
            return [(actual.element, element, "element")]
        case OptionType(), OptionOf(payload=payload):
            return [(actual.payload, payload, "value")]
        case TupleType(), TupleOf(elements=elements):
            elements_beside = zip(actual.elements, elements, strict=True)
            return [
                (part, shape, f"element {index}")
                for index, (part, shape) in enumerate(elements_beside)
            ]
        case RecordType(), Record(fields=fields):
            fields_beside = zip(actual.fields, fields, strict=True)
            return [(part, shape, name) for (name, part), (_, shape) in fields_beside]
        case _:
            return []


def shown(shape: Shape) -> str:
    """The WIT spelling of a contract type (a record by its fields' names)."""
    match shape:
        case Plain(name=name):
            return name
        case ListOf(element=element):
            return f"list<{shown(element)}>"
        case OptionOf(payload=payload):
            return f"option<{shown(payload)}>"
        case TupleOf(elements=elements):
            return f"tuple<{', '.join(shown(e) for e in elements)}>"
        case Record(fields=fields):
            return f"a record ({', '.join(name for name, _ in fields)})"
        case Enum(names=names):
            return "an enum of the FIPA acts" if len(names) == len(Performative) else "an enum"


def _field_names(record: RecordType) -> tuple[str, ...]:
    return tuple(name for name, _ in record.fields)


def _named(ty: ValType) -> str:
    """``ty`` in the WIT's spelling (a record by its fields' names)."""
    match ty:
        case RecordType():
            return f"a record ({', '.join(_field_names(ty))})"
        case EnumType():
            return f"an enum of {len(ty.names)} cases"
        case ListType():
            return f"list<{_named(ty.element)}>"
        case OptionType():
            return f"option<{_named(ty.payload)}>"
        case TupleType():
            return f"tuple<{', '.join(_named(e) for e in ty.elements)}>"
        case _:  # string, u8, f64, bool, ... and the kinds the contract never has
            return type(ty).__name__.lower().removesuffix("type")
