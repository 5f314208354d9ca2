"""Readiness: small probes, and one ``wait_until_healthy`` that owns retry, backoff and deadline.

The engine (:mod:`envkit.health.engine`) runs probes in parallel, retries transient errors and
fails at once on fatal ones. One module per probe family: :mod:`envkit.health.postgres`,
:mod:`envkit.health.network` (tcp, http) and :mod:`envkit.health.command`; the aws provider
keeps its boto3 probes in ``envkit.providers.aws.probes``. :mod:`envkit.health.spec` builds a
probe from an environment spec's entry. Only the engine's surface is re-exported here, so that
importing this package loads no probe code.
"""

from __future__ import annotations

from envkit.health.engine import (
    HealthCheckFailedError,
    HealthReport,
    Probe,
    ProbeError,
    ProbeResult,
    TransientError,
    wait_until_healthy,
)

__all__ = [
    "HealthCheckFailedError",
    "HealthReport",
    "Probe",
    "ProbeError",
    "ProbeResult",
    "TransientError",
    "wait_until_healthy",
]
