"""The one S3 layer: how shoal builds an S3 client and turns botocore failures into store errors.

Both the model store (``s3.py``) and the job store (``shoal/jobs/objects.py``) go through it,
so an endpoint that is down or overloaded (connection refused, timeout, 5xx, SlowDown) is
``StoreUnavailable`` in both: transient, worth retrying, never a model's or a job's fault.
Every other failure is one ``StoreError`` line naming what was being done, where.
"""

from __future__ import annotations

from typing import Any, Callable

from shoal.errors import StoreError, StoreUnavailable

UNAVAILABLE_CODES = ("InternalError", "ServiceUnavailable", "SlowDown", "500", "502", "503", "504")
CREDENTIAL_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403")
MISSING_CODES = ("NoSuchKey", "404")


def s3_client(endpoint_url: str | None, region: str, *, max_pool_connections: int = 10) -> Any:
    """A boto3 S3 client with shoal's timeouts and retries, from a fresh session.

    A fresh session per client: the default session caches credentials across stores.
    """
    import boto3.session
    from botocore.config import Config

    config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60,
                    request_checksum_calculation="when_required", response_checksum_validation="when_required",
                    max_pool_connections=max_pool_connections)
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def error_code(exc: Any) -> str:
    """The S3 error code of a botocore ``ClientError`` ("NoSuchKey", "503", ...)."""
    return exc.response.get("Error", {}).get("Code", "?")


def s3_call(uri: str, what: str, fn: Callable[..., Any], /, *, keep_missing: bool = False, **kwargs: Any) -> Any:
    """Run one S3 call, turning every botocore failure into one clear StoreError line.

    ``keep_missing``: a missing key (NoSuchKey, 404) re-raises botocore's ``ClientError`` so the
    caller can treat it as absent; otherwise it is a StoreError like any other refusal.
    """
    from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    try:
        return fn(**kwargs)
    except ClientError as exc:
        code = error_code(exc)
        if keep_missing and code in MISSING_CODES:
            raise
        if code in UNAVAILABLE_CODES:
            raise StoreUnavailable(f"{what} in {uri} failed: {code} (the store is unavailable)") from None
        hint = " (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)" if code in CREDENTIAL_CODES else ""
        raise StoreError(f"{what} in {uri} failed: {code}{hint}") from None
    except (BotoConnectionError, HTTPClientError) as exc:
        raise StoreUnavailable(f"{what} in {uri} failed: {exc}") from None
    except BotoCoreError as exc:
        raise StoreError(f"{what} in {uri} failed: {exc}") from None
