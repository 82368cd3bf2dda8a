"""Values cross into the native module as JSON text."""

from __future__ import annotations

import json

from ._native import encode_json

#: The JSON text of a value, as ``json.dumps(value, allow_nan=False)`` takes
#: values (in Rust: long strings are escaped many times faster); ``None`` at
#: the top, NaN, infinities and other types raise ``InvalidInputError``.
encode = encode_json

decode = json.loads
