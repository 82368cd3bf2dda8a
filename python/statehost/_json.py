"""Values cross into the native module as JSON text."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

from ._native import encode_json

#: The JSON text of a value, as ``json.dumps(value, allow_nan=False)`` takes
#: values (in Rust: long strings are escaped many times faster); ``None`` at
#: the top, NaN, infinities and other types raise ``InvalidInputError``.
encode = encode_json


def _number(text: str) -> float | Decimal:
    """A JSON number with a fraction or exponent: a ``float`` when the float
    is the same number, else a ``Decimal`` with every digit (beyond a
    float's range or precision), never a silently changed value."""
    value = float(text)
    if math.isfinite(value) and Decimal(repr(value)) == Decimal(text):
        return value
    return Decimal(text)


def decode(text: str) -> Any:
    """A value from its JSON text; integers of any size stay ``int``, and
    numbers a float cannot hold exactly come back as ``Decimal``."""
    return json.loads(text, parse_float=_number)
