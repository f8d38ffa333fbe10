"""A small immutable value class for the modules bay0 imports before READY.

``dataclasses`` imports inspect, which imports ast, dis, tokenize and linecache: 0.4 s
of a cold boot under QEMU TCG (``python -X importtime`` in the guest), all of it before
bay0 can print READY. The few value classes on that path (``bay0.main.Config``,
``bay0.invariants.MountEntry``/``Rule``, ``bay0.watchdog.Support``, ``bay0.pid1.Reaped``)
derive from ``Frozen`` instead: each lists its fields in ``__slots__`` and sets them in
its ``__init__`` with ``_set``; equality, hashing, ``repr`` and immutability come from
here, as ``@dataclass(frozen=True)`` would give them. Code that runs after READY keeps
using dataclasses.
"""

from __future__ import annotations


class Frozen:
    """Fields are ``__slots__``; compares and hashes by value; assignment raises."""

    __slots__ = ()

    def _set(self, **values: object) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: {type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: {type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__qualname__}({fields})"
