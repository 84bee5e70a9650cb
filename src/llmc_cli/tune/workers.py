"""Workers of a study: which process runs a trial, and what happens to a trial whose worker died.

A journal file has no heartbeat, so each trial records its worker (host, pid and the pid's start
time); any worker of the study can then tell a dead worker's trial from a slow one on its own host.
"""

from __future__ import annotations

import os
import socket
from typing import Any


def worker_identity() -> dict[str, Any]:
    """This process, as a trial records its worker: host, pid and the pid's start time (pids are reused)."""
    import psutil

    return {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time()}


def _alive(worker: dict[str, Any]) -> bool:
    import psutil

    try:
        process = psutil.Process(worker["pid"])
        same = abs(process.create_time() - worker["started"]) < 1.0
        return same and process.status() != psutil.STATUS_ZOMBIE  # a killed child not yet waited for
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, TypeError):
        return False


def reap_stale(study) -> list[int]:
    """Fail the running trials whose worker on this host has died, and queue each one again, once.

    A journal file has no heartbeat, so a trial records its worker (host, pid, start time); a
    worker that finds a trial of its own host whose process is gone marks it failed ("stale") and
    re-queues its parameters. Two workers may reap the same trial at once: each writes its name
    first, and only the one whose name the failed trial keeps (the log's order decides) re-queues
    it. Workers on other hosts are left alone: an RDB storage's heartbeat covers those. Returns
    the numbers of the trials this worker re-queued.
    """
    import uuid

    from optuna.trial import TrialState

    me, host, storage = uuid.uuid4().hex, socket.gethostname(), study._storage
    requeued = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if not worker or worker.get("host") != host or _alive(worker):
            continue
        storage.set_trial_user_attr(trial._trial_id, "stale", f"its worker (pid {worker['pid']}) died")
        storage.set_trial_user_attr(trial._trial_id, "reaped_by", me)
        try:
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except Exception:  # another worker finished it first (optuna's UpdateFinishedTrialError)
            continue
        if storage.get_trial(trial._trial_id).user_attrs.get("reaped_by") == me:
            study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number})
            requeued.append(trial.number)
    return requeued


def pending_reruns(study) -> list:
    """Queued trials that re-run a stale one (a dead worker's), not yet started."""
    from optuna.trial import TrialState

    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    return [t for t in waiting if "rerun_of" in t.user_attrs and not t.user_attrs.get("interrupted_rerun")]
