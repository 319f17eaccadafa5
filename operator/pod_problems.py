"""Why a rollout or verifier pod does not become ready, in one line for the RLVRJob's conditions.

A Deployment reports only "0/2 replicas available"; a user then has to find the pods and read their logs. The
operator reads the pods' container statuses instead: a container waiting in a failure state (crash loop, image
pull, bad config) is reported with its restart count and its last termination: exit code and message, which
the containers fill with the tail of their log when they fail (`terminationMessagePolicy:
FallbackToLogsOnError`), so the traceback's last line is in `kubectl get rlvr` and `kubectl describe rlvr`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from forkrl.operator.names import COMPONENT_LABEL

FAILING_WAIT_REASONS = frozenset({
    "CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError",
    "CreateContainerError", "RunContainerError",
})
MESSAGE_CHARS = 300
"""The end of a termination message that is kept (a traceback's last lines)."""


def _tail(text: str, limit: int = MESSAGE_CHARS) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    joined = " | ".join(lines[-3:])
    return joined if len(joined) <= limit else "..." + joined[-(limit - 3):]


def container_problem(pod: Mapping[str, Any]) -> str | None:
    """`pod NAME: REASON (N restarts): last exit CODE: MESSAGE` for the first failing container of a pod summary
    (metadata + status.containerStatuses), or None when none is failing."""
    name = (pod.get("metadata") or {}).get("name", "?")
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason not in FAILING_WAIT_REASONS:
            continue
        text = f"pod {name}: {reason} ({int(container.get('restartCount') or 0)} restarts)"
        last = (container.get("lastState") or {}).get("terminated") or {}
        if last:
            text += f": last exit {last.get('exitCode')}"
            detail = last.get("message") or last.get("reason")
            if detail:
                text += f": {_tail(str(detail))}"
        elif waiting.get("message"):
            text += f": {_tail(str(waiting['message']))}"
        return text
    return None


def component_problems(pods: Iterable[Mapping[str, Any]], component: str) -> tuple[str, ...]:
    """The problems of the pods of one component (sorted by pod name, so the message is stable)."""
    mine = sorted((p for p in pods if (p.get("metadata") or {}).get("labels", {}).get(COMPONENT_LABEL) == component),
                  key=lambda p: (p.get("metadata") or {}).get("name", ""))
    return tuple(problem for pod in mine if (problem := container_problem(pod)) is not None)
