"""Domain errors, each with its HTTP status and public message (API.md's table).

Services raise these; one middleware turns them into the JSON bodies of the
contract. Anything else is a bug: logged, and answered 500 without details.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from maskserve.core.images import ImageRejected


class ApiError(Exception):
    status = 500

    def __init__(self, detail: str = "Internal server error") -> None:
        super().__init__(detail)
        self.detail = detail

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail}


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401

    def __init__(self) -> None:
        super().__init__("Invalid or missing API key")


class InsufficientCredits(ApiError):
    status = 402

    def __init__(self) -> None:
        super().__init__("Insufficient credits")


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class PayloadTooLarge(ApiError):
    status = 413


class RateLimited(ApiError):
    status = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__("Rate limit exceeded")
        self.retry_after = retry_after


class Unavailable(ApiError):
    status = 503
    retry_after = 1  # seconds, in ``Retry-After``


Location = Literal["query", "body", "header"]


@dataclass(frozen=True)
class FieldError:
    location: Location
    name: str
    msg: str
    type: str = "value_error"

    def as_dict(self) -> dict[str, Any]:
        return {"loc": [self.location, self.name], "msg": self.msg, "type": self.type}


class ValidationFailed(ApiError):
    """422 with the contract's list-shaped ``detail``."""

    status = 422

    def __init__(self, *errors: FieldError) -> None:
        super().__init__("; ".join(f"{e.name}: {e.msg}" for e in errors))
        self.errors = errors

    @classmethod
    def one(cls, location: Location, name: str, msg: str) -> ValidationFailed:
        return cls(FieldError(location, name, msg))

    def body(self) -> dict[str, Any]:
        return {"detail": [e.as_dict() for e in self.errors]}


def rejection(exc: ImageRejected) -> ApiError:
    """An image the imaging code refused, as the contract's 413 (too large) or 422 (naming its field)."""
    if exc.too_large:
        return PayloadTooLarge(exc.message)
    return ValidationFailed.one("body", exc.field, exc.message)


class StorageUnavailable(RuntimeError):
    """The output storage (an S3-compatible bucket) cannot be reached: 503, never charged."""


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached (connect, pool, statement or commit): 503 with ``Retry-After``.

    Whatever a request had reserved or charged when it met this is settled by
    the journal once the database is back (``services/settlement.py``).
    """

    detail = "The database is unavailable"
    retry_after = 2


class InferenceUnavailable(RuntimeError):
    """Triton (or one of its models) cannot be reached or is not ready: 503, never charged."""


class WebhookUnreachable(RuntimeError):
    """A webhook target could not be reached (connection, DNS, timeout): the delivery is retried later."""


class LifecycleRefused(RuntimeError):
    """A model-lifecycle change that cannot be made as asked (``maskserve models`` says why, exit status 1)."""
