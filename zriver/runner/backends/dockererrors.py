"""Docker's errors in words a person can act on (the runner's Docker backend reports these).

``short_reason`` trims an exception to one line; ``start_failure`` turns Docker's refusal to start
a container into the task's ``Exit``: a command missing from the env (127), permission denied
(126), a refused privileged container, or Docker's own words.
"""

from __future__ import annotations

import re

import docker

from zriver import lifecycle as lc
from zriver.runner.backends import Exit, Job

_EXEC = re.compile(r'exec: "([^"]+)"')


def short_reason(exc: BaseException) -> str:
    """One line of at most 400 characters: Docker's explanation, else the exception."""
    text = getattr(exc, "explanation", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())[:400]


def start_failure(exc: docker.errors.APIError, job: Job) -> Exit:
    """The ``Exit`` of a container Docker would not start, with a reason a person can act on."""
    text = short_reason(exc)
    executed = _EXEC.search(text)
    command = executed.group(1) if executed else job.spec.command[0]
    where = f"env {job.spec.container} {job.spec.env_version}"
    if "executable file not found" in text or (
            "no such file or directory" in text and "exec" in text):
        return Exit(lc.FAILED, 127, f"command not found in {where}: {command}")
    if "permission denied" in text and "exec" in text:
        return Exit(lc.FAILED, 126, f"permission denied: {command} in {where}")
    if job.spec.privileged:
        return Exit(lc.FAILED, 126, f"Docker refused to start the privileged container: {text}")
    return Exit(lc.FAILED, 126, f"Docker could not start the container: {text}")
