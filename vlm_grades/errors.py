"""One exception type for bad user input: the CLI prints its message on one line and exits 2."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class UserError(Exception):
    """Bad input from the user (flag, file, data). The message names the culprit and what is wrong."""


@contextmanager
def as_user_error(*errors: type[Exception]) -> Iterator[None]:
    """Re-raises `errors` as UserError; for library exceptions whose messages already name the file at fault
    (nanovlm's CheckpointError)."""
    try:
        yield
    except errors as e:
        raise UserError(str(e)) from None
