"""The aws provider: Pulumi stacks driven by the Automation API, boto3 readiness probes and
the tag-based leak sweep.

Nothing outside this package imports its modules; the rest of envkit reaches it through
:func:`envkit.providers.get_provider` and the :class:`envkit.providers.Provider` protocol.

The readiness probes are public (``envkit.health.spec`` builds them for ``aws-rds`` and
``aws-ecs`` health entries); importing them loads no boto3 until a probe runs.
"""

from envkit.providers.aws.probes import EcsServicesProbe, RdsInstanceProbe

__all__ = ["EcsServicesProbe", "RdsInstanceProbe"]
