"""Argument checks shared by the typed configs, with messages that name the field and the fix."""

from __future__ import annotations


def check_positive_int(owner: object, name: str, hint: str) -> None:
    """Raise unless ``owner.name`` is an int >= 1 (bools refused); ``hint`` says what to use.

    Example:
        >>> class C: n = 0
        >>> check_positive_int(C(), "n", "Use 1.")
        Traceback (most recent call last):
        ValueError: n must be >= 1, got 0. Use 1.
    """
    value = getattr(owner, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r}).")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}. {hint}")
