"""cluster.env, env_value_from and env_from: what every forkrl container gets (credentials from Secrets,
never in the RLVRJob), what is refused naming the field, and that the API server accepts the result."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from tests.cluster.controlplane import ControlPlane
from tests.operator.test_children import _pod_specs, container, context

SECRET_ENV = {
    "AWS_SECRET_ACCESS_KEY": {"secret_key_ref": {"name": "s3-creds", "key": "secret"}},
    "REGION": {"config_map_key_ref": {"name": "site", "key": "region", "optional": True}},
}
ENV_FROM = [{"secret_ref": "hf-token", "prefix": "HF_"}, {"config_map_ref": "proxy", "optional": True}]


def test_secrets_and_config_maps_reach_every_container_by_reference() -> None:
    cluster = {"env": {"ZED": "1", "FORKRL_JOB": "hijack"}, "env_value_from": SECRET_ENV, "env_from": ENV_FROM}
    for where, pod in _pod_specs(context({"cluster": cluster})).items():
        main = container({"spec": pod})
        by_name = {e["name"]: e for e in main["env"]}
        assert by_name["AWS_SECRET_ACCESS_KEY"] == {
            "name": "AWS_SECRET_ACCESS_KEY",
            "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "secret", "optional": False}},
        }, where
        assert by_name["REGION"]["valueFrom"] == {
            "configMapKeyRef": {"name": "site", "key": "region", "optional": True}
        }, where
        assert by_name["ZED"] == {"name": "ZED", "value": "1"}, where
        assert by_name["FORKRL_JOB"] == {"name": "FORKRL_JOB", "value": "exp"}, where  # forkrl's own win
        assert [e["name"] for e in main["env"]].count("FORKRL_JOB") == 1, where
        user = [e["name"] for e in main["env"] if e["name"] in ("AWS_SECRET_ACCESS_KEY", "REGION", "ZED")]
        assert user == sorted(user), where
        assert main["envFrom"] == [
            {"secretRef": {"name": "hf-token", "optional": False}, "prefix": "HF_"},
            {"configMapRef": {"name": "proxy", "optional": True}},
        ], where
    for pod in _pod_specs(context()).values():
        assert "envFrom" not in container({"spec": pod})


def test_ambiguous_references_are_refused_naming_the_field() -> None:
    both = {"secret_key_ref": {"name": "a", "key": "k"}, "config_map_key_ref": {"name": "b", "key": "k"}}
    with pytest.raises(ValidationError, match=r"env_value_from\.X[\s\S]*exactly one of secret_key_ref"):
        context({"cluster": {"env_value_from": {"X": both}}})
    with pytest.raises(ValidationError, match=r"env_from\.0[\s\S]*exactly one of secret_ref"):
        context({"cluster": {"env_from": [{"prefix": "P_"}]}})
    with pytest.raises(ValidationError, match=r"cluster\.env and cluster\.env_value_from both set \['X'\]"):
        context({"cluster": {
            "env": {"X": "1"}, "env_value_from": {"X": {"config_map_key_ref": {"name": "a", "key": "k"}}}}})
    with pytest.raises(ValidationError, match=r"key"):
        context({"cluster": {"env_value_from": {"X": {"secret_key_ref": {"name": "a", "key": "no/slash"}}}}})


def test_the_api_server_accepts_the_referencing_pods(control_plane: ControlPlane, k8s_namespace: str) -> None:
    for account in ("exp-controller", "exp-workload"):  # the head pod's; the rollout and learner pods'
        control_plane.kubectl("create", "serviceaccount", account, "-n", k8s_namespace)
    pods = _pod_specs(context({"cluster": {"env_value_from": SECRET_ENV, "env_from": ENV_FROM}}))
    for where, pod in pods.items():
        manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": where, "namespace": k8s_namespace},
                    "spec": pod}
        result = control_plane.kubectl("create", "--dry-run=server", "-o", "yaml", "-f", "-",
                                       input=yaml.safe_dump(manifest))
        accepted = yaml.safe_load(result.stdout)["spec"]["containers"][0]
        assert accepted["envFrom"] == container({"spec": pod})["envFrom"], where
        assert {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {
            "name": "s3-creds", "key": "secret", "optional": False}}} in accepted["env"], where
