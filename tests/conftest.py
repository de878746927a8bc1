"""Test-wide settings: hypothesis never uses wall-clock deadlines, and is derandomized
under CI so a red run can be reproduced from the same commit. Helper modules that live
beside the tests (tests/ is not a package) are importable by name."""

import os
import sys

from hypothesis import HealthCheck, settings

settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci", deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], print_blob=True,
)
settings.load_profile("ci" if os.environ.get("CI") else "default")

_TESTS = os.path.dirname(os.path.abspath(__file__))
if _TESTS not in sys.path:
    sys.path.append(_TESTS)
