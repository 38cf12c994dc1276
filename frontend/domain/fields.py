"""The kinds of value a request declaration is made of: how each is read from query text, with the
contract's messages (every error has type ``value_error``), and what the JSON schema says of it."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
)
from pydantic_core import InitErrorDetails, PydanticCustomError, core_schema

from maskserve.frontend.domain.images import IMAGE_ID

MAX_FEATHER = 50
MAX_CROP_MARGIN = 500
MAX_REGION_AREA = 40_000_000  # the pixel limit: a larger area removes nothing more
MIN_POINTS_PER_SIDE, MAX_POINTS_PER_SIDE = 4, 64
MAX_WEBHOOK_URL = 2048
HEX_COLOUR = re.compile(r"#([0-9A-Fa-f]{6}|[0-9A-Fa-f]{8})")
OUTPUT_FORMATS = ("webp", "png", "jpeg")


class JsonQuery:
    """Marks a field whose query value is JSON text (decoded by the parser; not JSON: "invalid JSON array")."""


JSON = JsonQuery()


def invalid(msg: str) -> PydanticCustomError:
    """A field's error as the contract words it (type ``value_error``)."""
    return PydanticCustomError("value_error", "{msg}", {"msg": msg})


def refuse(model: str, name: str, msg: str, value: Any = None) -> ValidationError:
    """An error a check across fields raises, located at the field ``name`` (its query name)."""
    return ValidationError.from_exception_data(model, [InitErrorDetails(type=invalid(msg), loc=(name,), input=value)])


def _number(x: object) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        value = float(x)
    except OverflowError:  # an integer with hundreds of digits
        return None
    return value if math.isfinite(value) else None


def _points(raw: Any) -> Any:
    if raw is None:
        return None
    if not isinstance(raw, (list, tuple)) or not raw:
        raise invalid("must contain at least one [x, y] pair")
    if not all(isinstance(p, (list, tuple)) and len(p) == 2 and all(_number(c) is not None for c in p) for p in raw):
        raise invalid("must be an array of [x, y] pairs of finite numbers")
    return [(float(x), float(y)) for x, y in raw]


def _labels(raw: Any) -> Any:
    if raw is None:
        return None
    if not isinstance(raw, (list, tuple)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v in (0, 1) for v in raw
    ):
        raise invalid("labels must be 0 or 1")
    return list(raw)


def _box(raw: Any) -> Any:
    if raw is None:
        return None
    values = [_number(v) for v in raw] if isinstance(raw, (list, tuple)) else []
    if len(values) != 4 or any(v is None for v in values):
        raise invalid("must be [x1, y1, x2, y2] of finite numbers")
    x1, y1, x2, y2 = (float(v) for v in values if v is not None)
    if not (x1 < x2 and y1 < y2):
        raise invalid("must satisfy x1 < x2 and y1 < y2")
    return (x1, y1, x2, y2)


@dataclass(frozen=True)
class Ranged:
    """Metadata of a number in a range: parsed from the query text with the contract's messages.

    ``Annotated[int, Ranged(0, 50)]``; the bounds also reach the JSON schema (``minimum``/``maximum``).
    """

    low: float
    high: float | None
    kind: type = int

    def check(self, raw: Any) -> Any:
        integral = self.kind is int
        try:
            if isinstance(raw, bool) or (integral and isinstance(raw, float)):
                raise ValueError
            value = self.kind(raw)
            if not integral and not math.isfinite(value):
                raise ValueError
        except (ValueError, TypeError, OverflowError):
            raise invalid("must be an integer" if integral else "must be a number") from None
        if value < self.low or (self.high is not None and value > self.high):
            high = self.high
            raise invalid(f"must be from {self.low} to {high}" if high is not None else f"must be at least {self.low}")
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_before_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> Any:
        found = handler(schema)
        found["minimum"] = self.low
        if self.high is not None:
            found["maximum"] = self.high
        return found


@dataclass(frozen=True)
class Choice:
    """Metadata of a word from a fixed list (case-insensitive), with the contract's message."""

    options: tuple[str, ...]
    msg: str | None = None

    def check(self, raw: Any) -> str:
        value = str(raw).lower()
        if value not in self.options:
            raise invalid(self.msg or f"must be one of {', '.join(self.options)}")
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_before_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> Any:
        return {**handler(schema), "enum": list(self.options)}


def _flag(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if str(raw).lower() not in ("true", "false"):
        raise invalid("must be 'true' or 'false'")
    return str(raw).lower() == "true"


def check_colour(raw: Any) -> Any:
    if raw is not None and not (isinstance(raw, str) and HEX_COLOUR.fullmatch(raw)):
        raise invalid("must be #RRGGBB or #RRGGBBAA (hex; send '#' as %23)")
    return raw


WEBHOOK_URL = re.compile(r"^https?://[!-~]+$")


def check_webhook_url(raw: Any) -> Any:
    """Its form here; where it resolves to is checked when the request is accepted (``services.webhooks``)."""
    if raw is not None and not (isinstance(raw, str) and WEBHOOK_URL.match(raw) and len(raw) <= MAX_WEBHOOK_URL):
        raise invalid(f"must be an http or https URL (printable ASCII, at most {MAX_WEBHOOK_URL} characters)")
    return raw


def check_image_id(raw: Any) -> Any:
    if raw is not None and not (isinstance(raw, str) and IMAGE_ID.match(raw)):
        raise invalid("must be img_ followed by 32 lower-case hexadecimal digits")
    return raw


def check_job_id(raw: Any) -> Any:
    if raw is not None and (not raw or len(raw) > 64 or not raw.isascii() or not raw.isprintable()):
        raise invalid("must be a job id")
    return raw


Points = Annotated[list[tuple[float, float]] | None, BeforeValidator(_points)]
Labels = Annotated[list[int] | None, BeforeValidator(_labels)]
Box = Annotated[tuple[float, float, float, float] | None, BeforeValidator(_box)]
Flag = Annotated[bool, BeforeValidator(_flag)]
MaskFormat = Annotated[str, Choice(("png", "rle", "polygons"))]
EverythingMaskFormat = Annotated[str, Choice(("rle", "polygons"))]


class Declared(BaseModel):
    """A request's parameters or a record made from them: immutable, unknown names ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)
