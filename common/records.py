"""Record classes without the ``dataclasses`` import: the part of its API the
block layer uses (``dataclass(frozen=...)``, ``field(default_factory=...)``,
``replace``), with the same generated ``__init__``, ``__repr__``, ``__eq__``
and hashing rules.

``import dataclasses`` imports ``inspect`` (and with it ``ast``, ``dis`` and
``tokenize``): 5-8 ms of every start of a tool that opens an image, a tenth
of ``pyqemu-img rebase -u``'s whole CPU time. Modules on that path import
this module as ``dataclasses``.

Differences from the standard module, none of which the users rely on: no
``fields``/``asdict``/``astuple``/``is_dataclass``, no ordering, slots,
keyword-only fields, ``InitVar`` or ``__post_init__``; a frozen record's
assignments raise plain :class:`AttributeError` (the standard
``FrozenInstanceError`` is a subclass of it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, dataclass_transform

_T = TypeVar("_T")

_MISSING = object()


class _Field:
    __slots__ = ("default_factory",)

    def __init__(self, default_factory: Callable[[], Any]) -> None:
        self.default_factory = default_factory


def field(*, default_factory: Callable[[], Any]) -> Any:
    """A field whose default is made per instance by ``default_factory``."""
    return _Field(default_factory)


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise AttributeError(f"cannot assign to field '{name}'")


def _frozen_delattr(self: Any, name: str) -> None:
    raise AttributeError(f"cannot delete field '{name}'")


def _is_classvar(annotation: Any) -> bool:
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return text.startswith(("ClassVar", "typing.ClassVar"))


def _process(cls: type, frozen: bool) -> type:
    names: list[str] = []
    for base in reversed(cls.__mro__[1:]):
        names.extend(n for n in getattr(base, "__record_fields__", ()) if n not in names)
    own = cls.__dict__.get("__annotations__", {})
    names.extend(n for n, a in own.items() if not _is_classvar(a) and n not in names)
    defaults: dict[str, Any] = {}
    for name in names:
        value = getattr(cls, name, _MISSING)
        if value is not _MISSING and not isinstance(value, property):
            defaults[name] = value
        if isinstance(cls.__dict__.get(name), _Field):
            delattr(cls, name)  # the instance attribute, made in __init__
    params: list[str] = []
    body: list[str] = []
    namespace: dict[str, Any] = {"_MISSING": _MISSING}
    seen_default = False
    for name in names:
        value = defaults.get(name, _MISSING)
        if isinstance(value, _Field):
            namespace[f"_factory_{name}"] = value.default_factory
            params.append(f"{name}=_MISSING")
            expr = f"_factory_{name}() if {name} is _MISSING else {name}"
            seen_default = True
        elif value is not _MISSING:
            namespace[f"_default_{name}"] = value
            params.append(f"{name}=_default_{name}")
            expr = name
            seen_default = True
        else:
            if seen_default:
                raise TypeError(f"non-default argument '{name}' follows default argument")
            params.append(name)
            expr = name
        if frozen:
            body.append(f"  _setattr(self, {name!r}, {expr})")
        else:
            body.append(f"  self.{name} = {expr}")
    namespace["_setattr"] = object.__setattr__
    source = f"def __init__(self, {', '.join(params)}):\n" + ("\n".join(body) or "  pass")
    if not names:
        source = "def __init__(self):\n  pass"
    exec(source, namespace)  # noqa: S102 - generated from the annotations, as dataclasses does
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    fields = tuple(names)

    def __repr__(self: Any) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in fields)
        return f"{type(self).__qualname__}({inner})"

    def __eq__(self: Any, other: Any) -> Any:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return tuple(getattr(self, n) for n in fields) == tuple(getattr(other, n) for n in fields)

    attrs: dict[str, Any] = {"__init__": init, "__record_fields__": fields}
    if "__repr__" not in cls.__dict__:
        attrs["__repr__"] = __repr__
    if "__eq__" not in cls.__dict__:
        attrs["__eq__"] = __eq__
        if frozen:

            def __hash__(self: Any) -> int:
                return hash(tuple(getattr(self, n) for n in fields))

            attrs["__hash__"] = __hash__
        elif "__hash__" not in cls.__dict__:
            attrs["__hash__"] = None  # mutable and compared by value: unhashable
    if frozen:
        attrs["__setattr__"] = _frozen_setattr
        attrs["__delattr__"] = _frozen_delattr
    for name, value in attrs.items():
        setattr(cls, name, value)
    return cls


@dataclass_transform(field_specifiers=(field,))
def dataclass(cls: Any = None, /, *, frozen: bool = False) -> Any:
    """``@dataclass`` or ``@dataclass(frozen=True)``, as the standard one."""
    if cls is None:
        return lambda c: _process(c, frozen)
    return _process(cls, frozen)


def replace(obj: _T, /, **changes: Any) -> _T:
    """A copy of the record ``obj`` with ``changes``, as ``dataclasses.replace``."""
    fields = type(obj).__record_fields__  # type: ignore[attr-defined]
    for name in changes:
        if name not in fields:
            raise TypeError(
                f"{type(obj).__qualname__}.__init__() got an unexpected keyword argument '{name}'"
            )
    values = {n: changes[n] if n in changes else getattr(obj, n) for n in fields}
    return type(obj)(**values)
