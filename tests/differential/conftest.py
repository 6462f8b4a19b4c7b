"""Differential tests: the compiled engine (backstop._engine) against the reference (Python) on the same input.

The hypothesis profiles are those of tests/property (`ci` by default, `long` with HYPOTHESIS_PROFILE=long).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
