"""Argument checks shared by the typed configs, with messages that name the field and the fix."""

from __future__ import annotations

import torch


class InputTypeError(TypeError, ValueError):
    """An argument of the wrong type. A ``TypeError`` as Python expects, and a ``ValueError``,
    so that the command line reports it in one line like every other bad input."""


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
        raise InputTypeError(f"{name} must be an int, got {type(value).__name__} ({value!r}).")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}. {hint}")


def check_token_ids(ids, vocab_size: int, name: str = "input_ids") -> None:
    """Raise unless ``ids`` is an integer (not bool) tensor of ids in ``0 .. vocab_size - 1``.

    Example:
        >>> import torch
        >>> check_token_ids(torch.tensor([[1, 120]]), 100)
        Traceback (most recent call last):
        ValueError: input_ids hold ids from 1 to 120 but the model's vocabulary is 0..99; check the tokenizer (padding with -100 belongs in labels).
    """
    if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        raise ValueError(f"{name} must hold token ids (integers), got a {ids.dtype} tensor.")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(
            f"{name} hold ids from {int(ids.min())} to {int(ids.max())} but the model's vocabulary is "
            f"0..{vocab_size - 1}; check the tokenizer (padding with -100 belongs in labels)."
        )


def check_labels(labels, vocab_size: int) -> None:
    """Raise unless ``labels`` holds ids in ``0 .. vocab_size - 1`` or -100 (ignored).

    Example:
        >>> import torch
        >>> check_labels(torch.tensor([[-100, 3, 150]]), 100)
        Traceback (most recent call last):
        ValueError: labels hold 150, outside the model's vocabulary 0..99 (use -100 for positions to ignore).
    """
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must hold token ids (integers), with -100 for ignored positions; got {labels.dtype}.")
    bad = (labels != -100) & ((labels < 0) | (labels >= vocab_size))
    if bool(bad.any()):
        raise ValueError(f"labels hold {int(labels[bad][0])}, outside the model's vocabulary 0..{vocab_size - 1} "
                         "(use -100 for positions to ignore).")
