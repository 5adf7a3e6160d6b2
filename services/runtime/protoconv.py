"""Conversions between the model's plain values and protobuf: instants, calendar dates, enums,
exact money, and whole domain events mapped onto their proto message by field name."""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Iterable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, TypeVar

from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.type import date_pb2, money_pb2

from services.runtime.errors import FieldViolation, InvalidArgument

M = TypeVar("M", bound=Message)
E = TypeVar("E", bound=enum.Enum)

NANOS = Decimal(1_000_000_000)


def timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def from_timestamp(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def proto_date(day: date) -> date_pb2.Date:
    return date_pb2.Date(year=day.year, month=day.month, day=day.day)


def optional_date(value: date_pb2.Date, field: str) -> date | None:
    """None for an unset date (all zero); InvalidArgument for a date the calendar lacks."""
    if value.year == 0 and value.month == 0 and value.day == 0:
        return None
    try:
        return date(value.year, value.month, value.day)
    except ValueError:
        raise InvalidArgument(
            f"{field} is not a calendar date", [FieldViolation(field, "is not a calendar date")]
        ) from None


def required_date(value: date_pb2.Date, field: str) -> date:
    day = optional_date(value, field)
    if day is None:
        raise InvalidArgument(f"{field} is required", [FieldViolation(field, "is required")])
    return day


def _enum_prefix(descriptor: EnumDescriptor) -> str:
    # RegistrationState -> REGISTRATION_STATE_, the prefix AIP-126 gives every value.
    return re.sub(r"(?<!^)(?=[A-Z])", "_", descriptor.name).upper() + "_"


def enum_to_proto(value: enum.Enum, descriptor: EnumDescriptor) -> int:
    """The proto enum number for a model enum whose values are the proto names without prefix."""
    return int(descriptor.values_by_name[_enum_prefix(descriptor) + str(value.value)].number)


def enum_from_proto(kind: type[E], number: int, descriptor: EnumDescriptor, field: str) -> E:
    """The model enum for a proto enum number; UNSPECIFIED and unknown numbers are refused."""
    value = descriptor.values_by_number.get(number)
    name = value.name.removeprefix(_enum_prefix(descriptor)) if value is not None else ""
    try:
        return kind(name)
    except ValueError:
        allowed = ", ".join(str(member.value) for member in kind)
        description = f"must be one of {allowed}"
        raise InvalidArgument(f"{field} {description}", [FieldViolation(field, description)]) from None


def money(amount: Decimal, currency: str = "EUR") -> money_pb2.Money:
    """google.type.Money for an exact decimal amount (units and nanos carry the same sign)."""
    units = int(amount)
    nanos = int((amount - units) * NANOS)
    if nanos != (amount - units) * NANOS:
        raise ValueError(f"{amount} has more than nine decimal places")
    return money_pb2.Money(currency_code=currency, units=units, nanos=nanos)


def from_money(value: money_pb2.Money, field: str) -> Decimal:
    if (value.units > 0 and value.nanos < 0) or (value.units < 0 and value.nanos > 0):
        description = "units and nanos must have the same sign"
        raise InvalidArgument(f"{field} {description}", [FieldViolation(field, description)])
    if not -999_999_999 <= value.nanos <= 999_999_999:
        description = "nanos must be between -999999999 and 999999999"
        raise InvalidArgument(f"{field} {description}", [FieldViolation(field, description)])
    return Decimal(value.units) + Decimal(value.nanos) / NANOS


def _convert(value: Any, field: Any) -> Any:
    if field.message_type is not None:
        name = field.message_type.full_name
        if name == "google.protobuf.Timestamp":
            return timestamp(value)
        if name == "google.type.Date":
            return proto_date(value)
        if name == "google.type.Money":
            return money(value)
        cls = _message_class(field)
        return to_message(value, cls)
    if field.enum_type is not None and isinstance(value, enum.Enum):
        return enum_to_proto(value, field.enum_type)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Decimal):
        return str(value)
    return value


def _message_class(field: Any) -> type[Message]:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(field.message_type)


def to_message(source: Any, cls: type[M], **overrides: Any) -> M:
    """The proto message `cls` filled from the same-named fields of a dataclass.

    Fields the message lacks are a programming error (the event and its proto must agree),
    so they raise; fields the dataclass lacks stay unset. `overrides` set or replace fields.
    """
    values = {f.name: getattr(source, f.name) for f in dataclasses.fields(source)} | overrides
    message = cls()
    fields = cls.DESCRIPTOR.fields_by_name
    for name, value in values.items():
        field = fields.get(name)
        if field is None:
            raise ValueError(f"{cls.DESCRIPTOR.full_name} has no field {name!r} for {type(source).__name__}")
        if value is None:
            continue
        if field.is_repeated:
            items: Iterable[Any] = value
            converted = [_convert(item, field) for item in items]
            if field.message_type is not None:
                getattr(message, name).extend(converted)
            else:
                getattr(message, name)[:] = converted
        elif field.message_type is not None:
            getattr(message, name).CopyFrom(_convert(value, field))
        else:
            setattr(message, name, _convert(value, field))
    return message
