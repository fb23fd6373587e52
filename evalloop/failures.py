"""One line for every way a command can fail: what failed, the address or file, what to do.

``evalloop.cli.main`` runs every subcommand through ``describe_failure``, so no command answers
with a traceback (``EVALLOOP_DEBUG=1`` re-raises, for developers). The mapping is by exception
type; the message of a known failure is already written for a person.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import httpx
import redis
import yaml
from pydantic import ValidationError

from schemas.policy import PolicyError
from streams.services import ServiceUnavailable

#: Exit code of a failure of the environment (a service, a file) vs. a bad argument or input.
EXIT_FAILURE = 1
EXIT_USAGE = 2


class Failure(NamedTuple):
    """The line to print and the exit code."""

    line: str
    exit_code: int


def _settings_error(error: ValidationError) -> str:
    first = error.errors(include_url=False)[0] if error.errors() else {"loc": (), "msg": str(error)}
    where = ".".join(str(part) for part in first["loc"])
    variable = "EVALLOOP_" + "__".join(str(part).upper() for part in first["loc"]) if where else "EVALLOOP_*"
    return f"invalid setting {where or '(root)'}: {first['msg']} (check {variable} or .env)"


def describe_failure(error: BaseException) -> Failure:
    """The one line (and exit code) for ``error``."""
    if isinstance(error, ServiceUnavailable):
        return Failure(str(error), EXIT_FAILURE)
    if isinstance(error, (redis.ConnectionError, redis.TimeoutError)):
        return Failure(f"Redis stopped answering ({error}); is it up? (`make status`)", EXIT_FAILURE)
    if isinstance(error, redis.RedisError):
        return Failure(f"Redis refused the command: {error}", EXIT_FAILURE)
    if isinstance(error, httpx.TransportError):
        line = f"the teacher is not reachable ({error}); start it with `evalloop serve`"
        return Failure(line, EXIT_FAILURE)
    if isinstance(error, FileNotFoundError):
        return Failure(f"no such file: {error.filename}", EXIT_USAGE)
    if isinstance(error, (IsADirectoryError, PermissionError)):
        return Failure(f"cannot read {error.filename}: {error.strerror}", EXIT_USAGE)
    if isinstance(error, PolicyError):
        return Failure(f"policy: {error}", EXIT_USAGE)
    if isinstance(error, ValidationError):
        return Failure(_settings_error(error), EXIT_USAGE)
    if isinstance(error, (json.JSONDecodeError, yaml.YAMLError)):
        return Failure(f"cannot parse the file: {str(error).splitlines()[0]}", EXIT_USAGE)
    if isinstance(error, (ValueError, KeyError)):
        return Failure(str(error).strip("'\""), EXIT_USAGE)
    if isinstance(error, OSError):
        return Failure(f"{error.strerror or error}: {error.filename or ''}".rstrip(": "), EXIT_FAILURE)
    first = str(error).splitlines()[0] if str(error) else ""
    return Failure(
        f"unexpected {type(error).__name__}: {first} (EVALLOOP_DEBUG=1 shows the traceback)", EXIT_FAILURE
    )
