"""Values cross into the native module as JSON text."""

from __future__ import annotations

import json
from typing import Any

from .errors import InvalidInputError

_encoder = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def encode(value: Any) -> str:
    """JSON text of ``value``; ``None``, NaN, infinities and non-JSON types are refused."""
    if value is None:
        raise InvalidInputError("a value cannot be None; delete the key instead")
    try:
        return _encoder.encode(value)
    except ValueError as e:  # NaN or infinity (or a circular reference)
        raise InvalidInputError(f"the value is not JSON: {e}") from None
    except TypeError as e:
        raise InvalidInputError(f"the value is not JSON: {e}") from None


decode = json.loads
