"""Model ids: the one place that decides what a safe id is.

Ids become folder names in the store and path segments in URLs, so anything that
could escape a folder (``/``, ``..``, encoded separators, absolute paths) is refused.
"""

from __future__ import annotations

import re

from shoal.errors import UsageError

# the same rule as a pattern for OpenAPI (ECMA-262 regex, as JSON Schema reads it)
MODEL_ID_PATTERN = r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def is_valid_model_id(model_id: str) -> bool:
    return bool(_MODEL_ID.fullmatch(model_id)) and ".." not in model_id  # fullmatch: no trailing newline


def check_model_id(model_id: str) -> str:
    """Return ``model_id`` or raise UsageError saying what is allowed."""
    if not is_valid_model_id(model_id):
        raise UsageError(
            f"invalid model id {model_id!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, with no '/' and no '..'"
        )
    return model_id
