"""The types of a declared CSV import's columns: each reads one field's text, or says in a few
words why it cannot.

These describe a file's fields, not a job's parameters (those are ``Int``, ``Str``...): hence
the ``Csv`` prefix, which also keeps them apart from SQLAlchemy's ``Integer`` or ``Text``.
A type's :meth:`~CsvType.read` gets the field stripped of surrounding blanks and returns the
value a derived column's function sees; :meth:`~CsvType.stored` makes it what the table holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from sqlalchemy import BigInteger, Boolean, Date, DateTime, Integer, String
from sqlalchemy.types import TypeEngine

from batchapp.jobs.params import FALSE_WORDS, TRUE_WORDS
from batchapp.validate import shown

# Stored values are 64-bit integers on both databases.
INT64 = 2**63 - 1
_INT32 = 2**31 - 1
# Longer digit runs are out of any 64-bit range; int() of 4,300+ digits raises besides.
_MAX_DIGITS = 20
MAX_PLACES = 9
MAX_TEXT = 10_000


class BadValue(ValueError):
    """A field's text is not a value of its column's type; the message is the reason."""


class DeclarationError(ValueError):
    """A declared import is wrong (a bad type, name or key); one line."""


class CsvType:
    """A column type. Subclasses read text into a value and say how the table stores it."""

    # "time" and "date" values go to SQLite as text (see table_import.py); others as they are.
    db_kind: ClassVar[str] = ""

    def read(self, text: str, tz: ZoneInfo) -> Any:
        """The value of ``text`` (stripped, maybe empty); :class:`BadValue` says why not."""
        raise NotImplementedError

    def stored(self, value: Any) -> Any:
        """What the table holds for a value :meth:`read` made (or a derived function gave)."""
        return value

    def check_derived(self, value: Any) -> Any:
        """A derived function's result checked like a read one; :class:`BadValue` if not."""
        raise NotImplementedError

    def sql_type(self) -> TypeEngine[Any]:
        raise NotImplementedError

    def show(self, stored: Any) -> str:
        """A stored value as a field of a CSV line again (for a repeated key's reject)."""
        return "" if stored is None else str(stored)


def _int_bounds(kind: str, low: int, high: int) -> None:
    if isinstance(low, bool) or isinstance(high, bool):
        raise DeclarationError(f"{kind}: min and max must be integers")
    if not -INT64 <= low <= high <= INT64:
        raise DeclarationError(
            f"{kind}: need {-INT64:,} <= min <= max <= {INT64:,}, got min={low}, max={high}"
        )


def _digits(text: str, negative_allowed: bool) -> bool:
    body = text[1:] if negative_allowed and text.startswith("-") else text
    # [0-9] only: str.isdigit() alone also takes other scripts' digits ('١٢').
    return body.isascii() and body.isdigit()


@dataclass(frozen=True)
class CsvInt(CsvType):
    """A whole number in ``min..max`` (ASCII digits; a leading ``-`` only if ``min`` < 0)."""

    min: int = -INT64
    max: int = INT64

    def __post_init__(self) -> None:
        _int_bounds("CsvInt", self.min, self.max)

    def read(self, text: str, tz: ZoneInfo) -> int:
        # The common case first (plain digits, in range): this runs per field of a large file.
        if text.isdigit() and text.isascii() and len(text) <= _MAX_DIGITS:
            value = int(text)
            if self.min <= value <= self.max:
                return value
        if not _digits(text, self.min < 0):
            raise BadValue(f"not a whole number: {shown(text)}")
        if len(text) > _MAX_DIGITS:
            raise BadValue(f"must be between {self.min:,} and {self.max:,}, got {shown(text)}")
        value = int(text)
        if not self.min <= value <= self.max:
            raise BadValue(f"must be between {self.min:,} and {self.max:,}, got {value:,}")
        return value

    def check_derived(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadValue(f"not a whole number: {shown(value)}")
        if not self.min <= value <= self.max:
            raise BadValue(f"must be between {self.min:,} and {self.max:,}, got {value:,}")
        return value

    def sql_type(self) -> TypeEngine[Any]:
        return Integer() if self.min >= -_INT32 and self.max <= _INT32 else BigInteger()


@dataclass(frozen=True)
class CsvDecimal(CsvType):
    """An exact decimal with at most ``places`` decimal places, in ``min..max``; stored as an
    integer count of minor units (``19.90`` with ``places=2`` is 1990), which is also what a
    derived function sees. ``min``/``max`` are given as text, int or :class:`decimal.Decimal`
    (``max`` defaults to the largest a 64-bit column holds).
    """

    places: int = 2
    min: str | int | Decimal = 0
    max: str | int | Decimal | None = None
    _low: int = field(init=False, repr=False, compare=False)
    _high: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.places, bool) or not isinstance(self.places, int):
            raise DeclarationError(f"CsvDecimal: places must be an integer, got {self.places!r}")
        if not 0 <= self.places <= MAX_PLACES:
            raise DeclarationError(f"CsvDecimal: places must be 0 to {MAX_PLACES}")
        low = self._minor(self.min, "min")
        high = INT64 if self.max is None else self._minor(self.max, "max")
        _int_bounds("CsvDecimal (in minor units)", low, high)
        object.__setattr__(self, "_low", low)
        object.__setattr__(self, "_high", high)

    def _minor(self, bound: Any, name: str) -> int:
        try:
            if isinstance(bound, bool) or not isinstance(bound, str | int | Decimal):
                raise InvalidOperation
            exact = Decimal(bound).scaleb(self.places)
            if exact != exact.to_integral_value():
                raise InvalidOperation
            return int(exact)
        except (InvalidOperation, ValueError):
            raise DeclarationError(
                f"CsvDecimal: {name} must be a decimal with at most {self.places} places, "
                f"got {bound!r}"
            ) from None

    def read(self, text: str, tz: ZoneInfo) -> int:
        whole, dot, fraction = text.partition(".")
        # The common case inline (plain digits, in range): this runs per field of a large file.
        if (
            whole.isdigit()
            and whole.isascii()
            and len(whole) <= _MAX_DIGITS
            and len(fraction) <= self.places
            and (fraction.isdigit() and fraction.isascii() if dot else True)
        ):
            minor: int = int(whole) * 10**self.places
            if fraction:
                minor += int(fraction) * 10 ** (self.places - len(fraction))
            if self._low <= minor <= self._high:
                return minor
        if (
            not _digits(whole, self._low < 0)
            or (dot and not (fraction and _digits(fraction, False)))
            or len(fraction) > self.places
        ):
            raise BadValue(
                f"expected a decimal with at most {self.places} places, got {shown(text)}"
            )
        if len(whole.lstrip("-")) > _MAX_DIGITS:
            raise BadValue(f"must be between {self._bounds()}, got {shown(text)}")
        minor = int(whole) * 10**self.places
        extra = int(fraction.ljust(self.places, "0")) if self.places else 0
        return self.check_derived(minor - extra if whole.startswith("-") else minor + extra)

    def check_derived(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadValue(f"expected a whole number of minor units, got {shown(value)}")
        if not self._low <= value <= self._high:
            raise BadValue(f"must be between {self._bounds()}, got {self.show(value)}")
        return value

    def _bounds(self) -> str:
        return f"{self.show(self._low)} and {self.show(self._high)}"

    def sql_type(self) -> TypeEngine[Any]:
        return BigInteger()

    def show(self, stored: Any) -> str:
        if stored is None:
            return ""
        if not self.places:
            return str(stored)
        sign = "-" if stored < 0 else ""
        whole, part = divmod(abs(int(stored)), 10**self.places)
        return f"{sign}{whole}.{part:0{self.places}d}"


@dataclass(frozen=True)
class CsvText(CsvType):
    """Text of ``min_len..max_len`` characters; with ``pattern``, the whole text must match it
    (``pattern_help`` says in words what it allows, for the reject reason)."""

    min_len: int = 1
    max_len: int = 255
    pattern: str | None = None
    pattern_help: str | None = None
    _regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 <= self.min_len <= self.max_len <= MAX_TEXT:
            raise DeclarationError(
                f"CsvText: need 0 <= min_len <= max_len <= {MAX_TEXT:,}, "
                f"got min_len={self.min_len!r}, max_len={self.max_len!r}"
            )
        regex = None
        if self.pattern is not None:
            try:
                regex = re.compile(self.pattern)
            except (re.error, TypeError) as exc:
                raise DeclarationError(f"CsvText: bad pattern {self.pattern!r}: {exc}") from None
        object.__setattr__(self, "_regex", regex)

    def read(self, text: str, tz: ZoneInfo) -> str:
        if self.min_len <= len(text) <= self.max_len and (
            self._regex is None or self._regex.fullmatch(text)
        ):
            return text
        return self.check_derived(text)  # which says what is wrong

    def check_derived(self, value: Any) -> str:
        if not isinstance(value, str):
            raise BadValue(f"expected text, got {type(value).__name__}")
        length_ok = self.min_len <= len(value) <= self.max_len
        pattern_ok = self._regex is None or self._regex.fullmatch(value) is not None
        if self.pattern_help and not (length_ok and pattern_ok):
            raise BadValue(
                f"expected {self.min_len}-{self.max_len} {self.pattern_help}, got {shown(value)}"
            )
        if not length_ok:
            raise BadValue(f"expected {self.min_len}-{self.max_len} characters, got {len(value):,}")
        if not pattern_ok:
            raise BadValue(f"does not match the pattern {self.pattern!r}: {shown(value)}")
        return value

    def sql_type(self) -> TypeEngine[Any]:
        return String(self.max_len)


@dataclass(frozen=True)
class CsvDate(CsvType):
    """A calendar date, ``YYYY-MM-DD``."""

    db_kind: ClassVar[str] = "date"

    def read(self, text: str, tz: ZoneInfo) -> date:
        # fromisoformat also takes 20261125 and 2026-W48-3; a plain pattern keeps to one form.
        if len(text) != 10 or text[4] != "-" or text[7] != "-":
            raise BadValue(f"expected a date YYYY-MM-DD, got {shown(text)}")
        try:
            return date.fromisoformat(text)
        except ValueError:
            raise BadValue(f"expected a date YYYY-MM-DD, got {shown(text)}") from None

    def check_derived(self, value: Any) -> date:
        if isinstance(value, datetime) or not isinstance(value, date):
            raise BadValue(f"expected a date, got {type(value).__name__}")
        return value

    def sql_type(self) -> TypeEngine[Any]:
        return Date()


@dataclass(frozen=True)
class CsvTimestamp(CsvType):
    """An ISO 8601 date and time. With an offset it is that moment; without, it is read in
    ``BATCHAPP_TIMEZONE`` and must exist there (a daylight-saving gap is rejected). Stored as
    naive UTC; a derived function sees it as an aware time in ``BATCHAPP_TIMEZONE``."""

    db_kind: ClassVar[str] = "time"

    def read(self, text: str, tz: ZoneInfo) -> datetime:
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise BadValue(f"not an ISO 8601 date and time: {shown(text)}") from None
        try:
            if parsed.tzinfo is None:
                local = parsed.replace(tzinfo=tz).astimezone(UTC).astimezone(tz)
                if local.replace(tzinfo=None) != parsed:
                    raise BadValue(f"{text!r} does not exist in {tz} (clocks skip it)")
            else:
                # Through UTC: a moment outside year 1 to 9999 there raises OverflowError too.
                local = parsed.astimezone(tz)
        except OverflowError:
            # Year 1 or 9999 with an offset: the moment lies outside what datetime can hold.
            raise BadValue(f"out of range (year 1 to 9999 in UTC and {tz}): {text!r}") from None
        return local

    def stored(self, value: Any) -> Any:
        # What astimezone(UTC) does, at a third of its cost: this runs per row.
        offset = value.utcoffset()
        if offset is None:  # a tzinfo that does not know its offset: naive, as Python reads it
            return value.astimezone(UTC).replace(tzinfo=None)
        return value.replace(tzinfo=None) - offset

    def check_derived(self, value: Any) -> datetime:
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise BadValue(f"expected a datetime with a time zone, got {shown(value)}")
        try:
            value.astimezone(UTC)
        except OverflowError:
            raise BadValue(f"out of range: {value.isoformat()}") from None
        return value

    def sql_type(self) -> TypeEngine[Any]:
        return DateTime()


@dataclass(frozen=True)
class CsvBool(CsvType):
    """true/false, yes/no, on/off or 1/0, in any case (as the ``Bool`` job parameter)."""

    def read(self, text: str, tz: ZoneInfo) -> bool:
        word = text.lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise BadValue(f"expected true/false, yes/no, on/off or 1/0, got {shown(text)}")

    def check_derived(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise BadValue(f"expected true or false, got {shown(value)}")
        return value

    def sql_type(self) -> TypeEngine[Any]:
        return Boolean()

    def show(self, stored: Any) -> str:
        return "" if stored is None else ("true" if stored else "false")
