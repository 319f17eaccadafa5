"""The operator's ServiceAccount (installed by the `forkrl` chart) can do exactly what it needs: every
verb the operator uses is allowed, everything else checked here is denied. (Every other operator test
runs the operator with this ServiceAccount's token, so "enough" is also proven by use.)"""

from __future__ import annotations

import pytest
import yaml

from forkrl.operator.rbac import RULES, allowed
from tests.cluster.controlplane import ControlPlane
from tests.operator.harness import CHART, OPERATOR_NAMESPACE, OPERATOR_SA

SUBJECT = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SA}"


GRANTED = [
    (verb, group, resource)
    for rule in RULES
    for group in rule["apiGroups"]
    for resource in rule["resources"]
    for verb in rule["verbs"]
]
DENIED = [
    ("create", "forkrl.dev", "rlvrjobs"),
    ("delete", "forkrl.dev", "rlvrjobs"),
    ("update", "forkrl.dev", "rlvrjobs"),
    ("get", "", "secrets"),
    ("list", "", "secrets"),
    ("watch", "", "secrets"),
    ("patch", "", "secrets"),
    ("update", "", "secrets"),
    ("delete", "", "secrets"),
    ("create", "", "pods"),
    ("delete", "", "pods"),
    ("patch", "", "pods"),
    ("get", "", "pods"),
    ("update", "apps", "deployments"),
    ("get", "apps", "deployments"),
    ("deletecollection", "", "configmaps"),
    ("update", "", "configmaps"),
    ("create", "ray.io", "rayclusters"),
    ("patch", "", "nodes"),
    ("create", "rbac.authorization.k8s.io", "clusterroles"),
    ("create", "rbac.authorization.k8s.io", "clusterrolebindings"),
    ("escalate", "rbac.authorization.k8s.io", "roles"),
    ("bind", "rbac.authorization.k8s.io", "roles"),
    ("impersonate", "", "serviceaccounts"),
    ("create", "apiextensions.k8s.io", "customresourcedefinitions"),
    ("delete", "", "namespaces"),
    ("create", "", "serviceaccounts/token"),
    ("get", "forkrl.dev", "rlvrjobs/status"),
]


@pytest.mark.parametrize(("verb", "group", "resource"), GRANTED, ids=lambda v: str(v))
def test_every_granted_verb_is_allowed(forkrl_cluster: ControlPlane, verb: str, group: str, resource: str) -> None:
    name, _, sub = resource.partition("/")
    args = [verb, f"{name}.{group}" if group else name, "-n", "team-a", f"--as={SUBJECT}"]
    if sub:
        args.append(f"--subresource={sub}")
    assert forkrl_cluster.kubectl("auth", "can-i", *args, check=False).stdout.strip() == "yes"


@pytest.mark.parametrize(("verb", "group", "resource"), DENIED, ids=lambda v: str(v))
def test_everything_else_is_denied(forkrl_cluster: ControlPlane, verb: str, group: str, resource: str) -> None:
    assert not allowed(group, resource, verb)  # the table agrees with the cluster
    name, _, sub = resource.partition("/")
    args = [verb, f"{name}.{group}" if group else name, "-n", "team-a", f"--as={SUBJECT}"]
    if sub:
        args.append(f"--subresource={sub}")
    assert forkrl_cluster.kubectl("auth", "can-i", *args, check=False).stdout.strip() == "no"


def test_the_chart_renders_exactly_the_operator_rules(forkrl_cluster: ControlPlane) -> None:
    rendered = yaml.safe_load_all(forkrl_cluster.helm("template", "forkrl", str(CHART)).stdout)
    (role,) = [doc for doc in rendered if doc and doc["kind"] == "ClusterRole"]
    assert role["rules"] == RULES
    installed = forkrl_cluster.kubectl_json("get", "clusterrole", "forkrl")
    assert installed["rules"] == RULES
