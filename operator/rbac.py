"""The operator's RBAC: exactly the verbs and resources it uses. Chart `forkrl` renders them from files
`forkrl crd --write` generates here: all of RULES in one ClusterRole when the operator watches every
namespace; with `operator.watchNamespaces`, a Role of the namespaced rules in each watched namespace and
a ClusterRole of only the cluster-scoped ones (CRD discovery, the cluster-wide peering object).

Why each rule exists:
- rlvrjobs: watch (kopf), get (fresh read per reconcile), patch (kopf's finalizer and annotations);
  rlvrjobs/status: the operator's status; rlvrjobs/finalizers: `blockOwnerDeletion` owner references
  need `update` there when the OwnerReferencesPermissionEnforcement admission plugin is on.
- children (RayJobs, Deployments, Services, ConfigMaps, ServiceAccounts, Roles, RoleBindings, PVCs,
  PodMonitors, NetworkPolicies): list/watch (kopf indices), create+patch (server-side apply: a create the first time),
  delete (retries replace the RayJob; the finalizer sweeps). ConfigMaps also `get` (none watched by name).
- secrets: create only, for each job's control token (`<job>-control-<uid8>`): the operator never reads,
  lists or changes a Secret, so it cannot read the cluster's credentials.
- pods: list/watch only, to notice failed learner pods.
- events: create (kopf posts one per transition).
- clusterkopfpeerings: kopf's peering between replicas (list/watch/patch); CRDs: list/watch for kopf's
  resource scanning.
The per-job Role the operator grants the controller (get/patch of `<job>-status`) is a subset of these,
so creating it needs no `escalate`/`bind`.
"""

from __future__ import annotations

from typing import Any

import yaml

CHILD_VERBS = ["list", "watch", "create", "patch", "delete"]

RULES: list[dict[str, Any]] = [
    {"apiGroups": ["forkrl.dev"], "resources": ["rlvrjobs"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": ["forkrl.dev"], "resources": ["rlvrjobs/status"], "verbs": ["patch"]},
    {"apiGroups": ["forkrl.dev"], "resources": ["rlvrjobs/finalizers"], "verbs": ["update"]},
    {"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": CHILD_VERBS},
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": CHILD_VERBS},
    {"apiGroups": [""], "resources": ["services", "serviceaccounts", "persistentvolumeclaims"], "verbs": CHILD_VERBS},
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", *CHILD_VERBS]},
    {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": CHILD_VERBS},
    {"apiGroups": ["monitoring.coreos.com"], "resources": ["podmonitors"], "verbs": CHILD_VERBS},
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": CHILD_VERBS},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {"apiGroups": ["kopf.dev"], "resources": ["clusterkopfpeerings"], "verbs": ["list", "watch", "patch"]},
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
]


CLUSTER_SCOPED_RESOURCES = frozenset({"customresourcedefinitions", "clusterkopfpeerings"})
NAMESPACED_RULES = [r for r in RULES if not CLUSTER_SCOPED_RESOURCES & set(r["resources"])]
# With --namespace, kopf resolves the names against the namespace list (and watches it, for patterns); without
# this it retries each start and falls back to assuming they exist. Cluster-wide mode never lists them.
NAMESPACE_DISCOVERY = {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}
CLUSTER_SCOPED_RULES = [r for r in RULES if CLUSTER_SCOPED_RESOURCES & set(r["resources"])] + [NAMESPACE_DISCOVERY]


def rules_yaml(rules: list[dict[str, Any]]) -> str:
    return yaml.safe_dump(rules, sort_keys=False, width=120)


def allowed(group: str, resource: str, verb: str) -> bool:
    """Whether RULES grant `verb` on `group`/`resource` (subresources as `rlvrjobs/status`)."""
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in RULES)
