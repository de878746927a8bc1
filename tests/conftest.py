"""Test-wide settings: hypothesis never uses wall-clock deadlines, and is derandomized
under CI so a red run can be reproduced from the same commit. Helper modules that live
beside the tests (tests/ is not a package) are importable by name. Modules that start
node processes are marked `real_cluster`: `make test` runs everything else on both cores
(pytest-xdist), then these one at a time (their timing and ports must not compete)."""

import os
import sys

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci", deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], print_blob=True,
)
settings.load_profile("ci" if os.environ.get("CI") else "default")

_TESTS = os.path.dirname(os.path.abspath(__file__))
if _TESTS not in sys.path:
    sys.path.append(_TESTS)


# Modules whose tests start node processes, dqlite, the demo or the benchmark.
REAL_CLUSTER_MODULES = frozenset({
    "test_bench", "test_cli", "test_client_cluster", "test_client_failover", "test_connection_limits", "test_database_sessions_real", "test_dbapi_real", "test_demo",
    "test_example_http_kv", "test_go_dqlite_shell", "test_jepsen_real", "test_membership_real", "test_peer_auth", "test_quorum_loss",
    "test_node_identity", "test_real_cluster", "test_tls_cluster", "test_wire_against_dqlite", "test_wire_fuzz",
    "test_wire_server",
})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.stem in REAL_CLUSTER_MODULES:
            item.add_marker(pytest.mark.real_cluster)
