"""The controller's cluster-facing tests use the real control plane from tests/cluster."""

from tests.cluster.fixtures import *  # noqa: F403
