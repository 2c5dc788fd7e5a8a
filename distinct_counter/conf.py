"""Typed, validated settings, parsed once and parsed again on ``setting_changed`` (so
``override_settings`` just works).

Each product declares its keys as :class:`Option` attributes of a :class:`Settings` class
(``distinct_counter.counting.conf``, ``distinct_counter.routing.conf``,
``distinct_counter.cache.conf``). An option holds its default and one validator; the code
reads ``settings.NAME`` and gets a value of the declared type, and the system checks call the
very same validator through :meth:`Settings.errors`, so a value is never judged twice, nor
differently.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar, overload

from django.conf import settings as django_settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

T = TypeVar("T")
S = TypeVar("S", bound="Settings")

#: The settings objects holding parsed values, emptied by :func:`forget_parsed`.
_parsed: weakref.WeakSet[Settings] = weakref.WeakSet()


class Option(Generic[T]):
    """One key of a settings dict: its default, and the validator that turns a raw value into
    a ``T`` or raises ``ValueError`` saying what is wrong with it.

    Read on an instance of its :class:`Settings`, it returns the validated value, or raises
    ``ImproperlyConfigured`` with the message of the system check ``check_id``.
    """

    name: str

    def __init__(self, default: Any, parse: Callable[[Any], T], check_id: str, hint: str) -> None:
        self.default = default
        self.parse = parse
        self.check_id = check_id
        self.hint = hint

    def __set_name__(self, owner: type[Settings], name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type[Settings]) -> Option[T]: ...

    @overload
    def __get__(self, obj: Settings, owner: type[Settings]) -> T: ...

    def __get__(self, obj: Settings | None, owner: type[Settings]) -> Option[T] | T:
        if obj is None:
            return self
        cache: dict[str, Any] | None = obj.__dict__.get("_parsed")
        if cache is not None and self.name in cache:
            return cache[self.name]  # type: ignore[no-any-return]
        value = obj.raw().get(self.name, self.default)
        try:
            parsed = self.parse(value)
        except ValueError as exc:
            raise ImproperlyConfigured(f"{self.message(obj, value, exc)} {self.hint}") from None
        if cache is None:
            cache = obj.__dict__["_parsed"] = {}
            _parsed.add(obj)
        cache[self.name] = parsed
        return parsed

    def message(self, obj: Settings, value: Any, exc: ValueError) -> str:
        return f"{obj.where}[{self.name!r}] is {value!r}: {exc}."

    def error(self, obj: Settings) -> checks.CheckMessage | None:
        """The system check error of this option's current value, if it is invalid."""
        value = obj.raw().get(self.name, self.default)
        try:
            self.parse(value)
        except ValueError as exc:
            return checks.Error(self.message(obj, value, exc), hint=self.hint, id=self.check_id)
        return None


def forget_parsed() -> None:
    """Forget every parsed value (on ``setting_changed``): the next read parses again."""
    for obj in list(_parsed):
        obj.__dict__.pop("_parsed", None)


class Settings:
    """A set of :class:`Option` read from one dict of the project's settings.

    A value is parsed on its first read and kept until ``setting_changed`` (sent by
    ``override_settings``) calls :func:`forget_parsed`: the write path reads a dozen options
    per save, and parsing them each time was a measurable share of its cost.
    """

    #: How messages name the dict, e.g. ``DISTINCT_COUNTER``.
    where = "DISTINCT_COUNTER"

    def raw(self) -> Mapping[str, Any]:
        """The dict the options are read from, as it is now."""
        value = getattr(django_settings, "DISTINCT_COUNTER", None) or {}
        return value if isinstance(value, Mapping) else {}

    @classmethod
    def options(cls) -> dict[str, Option[Any]]:
        """Every option of this class and its bases, by name, in declaration order."""
        found: dict[str, Option[Any]] = {}
        for klass in reversed(cls.__mro__):
            found.update((k, v) for k, v in vars(klass).items() if isinstance(v, Option))
        return found

    def value_or(self, name: str, fallback: T) -> Any | T:
        """The valid value of option ``name``, or ``fallback`` when it is invalid: for the
        system checks that look past one invalid option to the others, and for code that
        chooses to degrade rather than fail (the router sends reads to the primary)."""
        option: Option[Any] = getattr(type(self), name)
        try:
            return option.parse(self.raw().get(name, option.default))
        except ValueError:
            return fallback

    def errors(self) -> list[checks.CheckMessage]:
        """One system check error per invalid option."""
        return [e for o in self.options().values() if (e := o.error(self)) is not None]


# -- validators: each returns the typed value or raises ValueError saying what is wrong -----


def positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError("not a positive number")
    return float(value)


def non_negative_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError("not a number of 0 or more")
    return float(value)


def positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("not a positive integer")
    return value


def text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("not a non-empty string")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("not True or False")
    return value


def optional(parse: Callable[[Any], T]) -> Callable[[Any], T | None]:
    """``parse``, or None for None."""

    def parse_optional(value: Any) -> T | None:
        return None if value is None else parse(value)

    return parse_optional


def choice(*choices: str) -> Callable[[Any], str]:
    def parse_choice(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"not one of {', '.join(map(repr, choices))}")
        return str(value)

    return parse_choice


def aliases(value: Any) -> list[str]:
    """A list (or tuple) of non-empty alias strings; None is the empty list."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(isinstance(a, str) and a for a in value):
        raise ValueError("not a list of aliases")
    return list(value)


def unknown_keys(raw: Mapping[str, Any], known: Iterable[str]) -> list[str]:
    return sorted(set(raw) - set(known))


def is_subclass_path(path: Any, *bases: str) -> bool:
    """Whether the dotted ``path`` (or a class) names one of ``bases`` (dotted paths) or a
    subclass of one; False for what cannot be imported."""
    if isinstance(path, str) and path in bases:
        return True
    try:
        cls = import_string(path) if isinstance(path, str) else path
    except ImportError:
        return False
    if not isinstance(cls, type):
        cls = type(cls)
    for base in bases:
        try:
            if issubclass(cls, import_string(base)):
                return True
        except ImportError:
            continue
    return False


def database_errors(keys: dict[str, str | None]) -> list[checks.CheckMessage]:
    """``distinct_counter.E006`` for each ``DISTINCT_COUNTER`` key naming an unknown database."""
    return [
        checks.Error(
            f"DISTINCT_COUNTER[{key!r}] names the database {alias!r}, which is not in DATABASES.",
            hint=f"Use one of: {', '.join(django_settings.DATABASES)}.",
            id="distinct_counter.E006",
        )
        for key, alias in keys.items()
        if alias is not None and alias not in django_settings.DATABASES
    ]
