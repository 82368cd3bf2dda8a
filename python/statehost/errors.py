"""The exceptions statehost raises.

::

    StatehostError
    ├── ConfigError               the config, or the plugin it names, cannot be used
    ├── InvalidInputError         a bad key, value or scope (also a ValueError)
    ├── BackendError              the plugin failed (a caught plugin panic too)
    │   ├── BackendUnavailableError   storage unreachable, slow, or too many calls: retry later
    │   └── StateNotFoundError        the object a reference names is gone (also a KeyError)
    ├── StoreError                statehost's metadata database failed
    │   └── OutcomeUnknownError       the write may or may not have been applied
    └── CorruptStateError         a row that cannot be read back (dangling or malformed)

Every message is one line that says what to do. A missing key is not an
error: ``get`` returns the default.
"""

from __future__ import annotations

__all__ = [
    "StatehostError",
    "ConfigError",
    "InvalidInputError",
    "BackendError",
    "BackendUnavailableError",
    "StateNotFoundError",
    "StoreError",
    "OutcomeUnknownError",
    "CorruptStateError",
]


class StatehostError(Exception):
    """Base class of every statehost error."""


class ConfigError(StatehostError):
    """The configuration, or the plugin it names, cannot be used."""


class InvalidInputError(StatehostError, ValueError):
    """A key, value or scope statehost refuses before calling the backend."""


class BackendError(StatehostError):
    """The state backend (the plugin) failed, or panicked (caught at its boundary)."""


class BackendUnavailableError(BackendError):
    """The storage could not be reached, the call passed its deadline, or too
    many calls were in flight; retrying later may succeed."""


class StateNotFoundError(BackendError, KeyError):
    """The object a stored reference names does not exist."""

    def __str__(self) -> str:  # KeyError quotes its argument; show the sentence.
        return str(self.args[0]) if self.args else ""


class StoreError(StatehostError):
    """statehost's own metadata database failed."""


class OutcomeUnknownError(StoreError):
    """The database connection failed after the write was sent: it may or may
    not have been applied. Read the key to find out."""


class CorruptStateError(StatehostError):
    """A row that cannot be read back: its object was deleted behind
    statehost's back, or the row is malformed."""
