"""The control-plane fixtures (see tests/cluster/fixtures.py) for the tests in this folder."""

from tests.cluster.fixtures import *  # noqa: F403
