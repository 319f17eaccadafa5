"""Progress reporting to the operator: on Kubernetes the controller patches the `<job>-status` ConfigMap
(keys step, reward, accuracy, weightVersion, checkpoint, updatedAt; see operator/names.py) that the
operator copies into the RLVRJob's status. Locally (no FORKRL_STATUS_CONFIGMAP) it does nothing."""

from __future__ import annotations

import datetime
import os
from typing import Any


class StatusReporter:
    """Patches the status ConfigMap; a failed patch is logged, never fatal to training."""

    def __init__(self, configmap: str, namespace: str, api: Any = None, log=print) -> None:
        self.configmap = configmap
        self.namespace = namespace
        self.log = log
        self.last: dict[str, str] = {}
        if api is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
            api = client.CoreV1Api()
        self.api = api

    @classmethod
    def from_env(cls, log=print) -> StatusReporter | None:
        """The reporter the operator asked for through FORKRL_STATUS_CONFIGMAP / FORKRL_NAMESPACE, or None."""
        name, namespace = os.environ.get("FORKRL_STATUS_CONFIGMAP"), os.environ.get("FORKRL_NAMESPACE")
        if not name or not namespace:
            return None
        return cls(name, namespace, log=log)

    def report(self, step: int, weight_version: int, reward: float | None = None, accuracy: float | None = None,
               checkpoint: str | None = None) -> bool:
        data = {"step": str(step), "weightVersion": str(weight_version),
                "updatedAt": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        if reward is not None:
            data["reward"] = repr(float(reward))
        if accuracy is not None:
            data["accuracy"] = repr(float(accuracy))
        if checkpoint is not None:
            data["checkpoint"] = checkpoint
        try:
            self.api.patch_namespaced_config_map(self.configmap, self.namespace, {"data": data})
        except Exception as err:  # the run must not die because the API server blinked
            self.log(f"status ConfigMap {self.namespace}/{self.configmap} not updated: {err}")
            return False
        self.last = data
        return True
