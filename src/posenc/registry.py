"""A name -> class table filled by a class decorator: the one behind ``posenc.register`` (encodings) and
``posenc.lab.tasks.register_task`` (lab tasks).

The decorator checks the name (a lowercase identifier), the class (a subclass of the table's base, with an allowed
value of one class attribute: an encoding's ``family``, a task's ``kind``) and refuses to give a taken name to
another class; the lookup suggests close names for a typo.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = ["Registry"]

C = TypeVar("C", bound=type)


class Registry(Generic[C]):
    """Classes by name.

    Args:
        what: the noun in messages (``"encoding"``, ``"task"``).
        base: every registered class subclasses it.
        example: a valid name, shown in messages.
        decorator: the decorator's public name, which messages start with (``"register"``).
        attribute, allowed: the class attribute every registered class must set to one of ``allowed``.
    """

    def __init__(self, what: str, base: type, *, example: str, decorator: str, attribute: str,
                 allowed: tuple[str, ...]) -> None:
        self.what, self.base, self.example, self.decorator_name = what, base, example, decorator
        self.attribute, self.allowed = attribute, allowed
        self._classes: dict[str, C] = {}

    def register(self, name: str) -> Callable[[C], C]:
        """Class decorator: file the class under ``name`` (and set its ``name`` attribute)."""
        who = self.decorator_name
        if not isinstance(name, str) or not name.isidentifier() or name.lower() != name:
            raise ValueError(f"{who}: {self.what} names are lowercase identifiers such as {self.example!r}; got "
                             f"{name!r}.")

        def decorator(cls: C) -> C:
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"{who}({name!r}) decorates {self.base.__name__} subclasses; got {cls!r}.")
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"{who}: {name!r} is already registered to {self._classes[name].__qualname__}.")
            value = getattr(cls, self.attribute)
            if value not in self.allowed:
                raise ValueError(f"{who}({name!r}): {self.attribute} {value!r} is not one of {self.allowed}.")
            cls.name = name  # type: ignore[attr-defined]  # C is bound to `type`: every table's base declares name
            self._classes[name] = cls
            return cls

        return decorator

    def lookup(self, name: str) -> C:
        """The class filed under ``name``; a clear error (with close names) for anything else."""
        if not isinstance(name, str):
            raise TypeError(f"{self.what} name must be a str such as {self.example!r}; got {type(name).__name__}.")
        if name not in self._classes:
            close = difflib.get_close_matches(name, self._classes, n=3, cutoff=0.5)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"unknown {self.what} {name!r}.{hint} Available: {', '.join(sorted(self._classes))}.")
        return self._classes[name]

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __getitem__(self, name: str) -> C:
        return self._classes[name]

    def __delitem__(self, name: str) -> None:  # unregister (tests that register a class for their own use)
        del self._classes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)
