"""YAML files read into pydantic models, every bad input one error line naming the file.

Model catalog entries (``shoal/spec.py``), the instance catalog (``shoal/pack/catalog.py``)
and load scenarios (``shoal/loadtest/scenario.py``) are all a YAML mapping validated by a
pydantic model; this is the one loader they share, so a missing file, a YAML syntax error,
a list where a mapping belongs and a field pydantic refuses read the same way in each:
``<what> <path> is malformed at <field>: <message>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from shoal.errors import UsageError

M = TypeVar("M", bound=BaseModel)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def load_yaml_model(path: Path | str, model: type[M], *, what: str, shape: str, missing_hint: str = "",
                    invalid: str = "is not readable YAML") -> M:
    """Read ``path`` and validate it as ``model``; a UsageError of one line for every kind of bad input.

    ``what`` names the file for the user ("scenario file"), ``shape`` says what the mapping
    holds ("of setting: value"), ``missing_hint`` is added when the file does not exist, and
    ``invalid`` is the wording of a YAML syntax error. A UsageError raised by a validator (an
    invalid model id) keeps its text, prefixed with the file.
    """
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise UsageError(f"{what} {p} does not exist{missing_hint}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise UsageError(f"{what} {p} {invalid}{where}: {_one_line(getattr(exc, 'problem', None) or exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{what} {p} is not readable: {_one_line(exc)}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{what} {p} must be a mapping {shape}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "top level"
        raise UsageError(f"{what} {p} is malformed at {where}: {_one_line(err['msg'])}") from None
    except UsageError as exc:
        raise UsageError(f"{what} {p}: {exc}") from None
