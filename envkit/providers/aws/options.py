"""The aws provider's network and database settings (``ENVKIT_AWS_*``), checked once.

Only what a setting names explicitly is written over a stack's config: a value someone set with
``pulumi config set envkit:public true`` is kept when no setting says otherwise.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from envkit.errors import ConfigError
from envkit.settings import Settings

EGRESS_MODES = ("public", "nat", "endpoints")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

# setting name -> (environment variable, stack config key)
VARIABLES: dict[str, tuple[str, str]] = {
    "egress": ("ENVKIT_AWS_EGRESS", "envkit:egress"),
    "public": ("ENVKIT_AWS_PUBLIC", "envkit:public"),
    "ci_cidr": ("ENVKIT_AWS_CI_CIDR", "envkit:ciCidr"),
    "availability_zones": ("ENVKIT_AWS_AZS", "envkit:availabilityZones"),
    "engine_version": ("ENVKIT_AWS_ENGINE_VERSION", "envkit:engineVersion"),
    "instance_class": ("ENVKIT_AWS_INSTANCE_CLASS", "envkit:instanceClass"),
    "spot": ("ENVKIT_AWS_SPOT", "envkit:spot"),
    "vpc_cidr": ("ENVKIT_AWS_VPC_CIDR", "envkit:vpcCidr"),
    "redis_engine": ("ENVKIT_AWS_REDIS_ENGINE", "envkit:redisEngine"),
    "redis_node_type": ("ENVKIT_AWS_REDIS_NODE_TYPE", "envkit:redisNodeType"),
    "shared_database": ("ENVKIT_AWS_SHARED_DATABASE", "envkit:sharedDatabase"),
    "shared_instance_class": ("ENVKIT_AWS_SHARED_INSTANCE_CLASS", "envkit:sharedInstanceClass"),
}
REDIS_ENGINES = ("redis", "valkey")


# option name -> Settings field
_SETTING = {name: "aws_" + ("azs" if name == "availability_zones" else name) for name in VARIABLES}


@dataclass(frozen=True)
class AwsOptions:
    """Network egress, database reachability and sizing of the stacks; ``explicit``: the names
    a setting gave (only those overwrite an existing stack's config)."""

    egress: str = "public"
    public: bool = False
    ci_cidr: str | None = None
    availability_zones: tuple[str, ...] = ()
    engine_version: str = "16"
    instance_class: str = "db.t4g.micro"
    spot: bool = False
    vpc_cidr: str = "10.42.0.0/16"
    redis_engine: str = "redis"
    redis_node_type: str = "cache.t4g.micro"
    shared_database: bool = False  # the pipeline's database on the base stack's RDS instance
    shared_instance_class: str = "db.t4g.small"
    explicit: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_env(cls, env: Mapping[str, str], settings: Settings | None = None) -> AwsOptions:
        """Read the settings (``ENVKIT_AWS_*``, ``[tool.envkit] aws_*``), else ``env``; a bad
        value is a ``ConfigError`` naming the variable."""
        values: dict[str, object] = {}
        for name, (variable, _) in VARIABLES.items():
            given = getattr(settings, _SETTING[name], None) if settings is not None else None
            raw = (given if given is not None else env.get(variable, "")).strip()
            if raw:
                values[name] = _parse(name, variable, raw)
        return cls(**values, explicit=frozenset(values))  # type: ignore[arg-type]

    def config_keys(self) -> dict[str, str]:
        """Stack config key of every setting name."""
        return {name: key for name, (_, key) in VARIABLES.items()}


def _parse(name: str, variable: str, raw: str) -> object:
    if name in ("public", "spot", "shared_database"):
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ConfigError(f"{variable} must be true or false, not {raw!r}.")
    if name == "egress":
        if raw not in EGRESS_MODES:
            raise ConfigError(
                f"{variable} must be one of {', '.join(EGRESS_MODES)}, not {raw!r}.",
                hint="See the README's aws section for what each costs per hour.",
            )
        return raw
    if name == "redis_engine":
        if raw not in REDIS_ENGINES:
            raise ConfigError(f"{variable} must be one of {', '.join(REDIS_ENGINES)}, not {raw!r}.")
        return raw
    if name in ("ci_cidr", "vpc_cidr"):
        try:
            network = ipaddress.ip_network(raw)
        except ValueError:
            raise ConfigError(f"{variable} must be an IPv4 CIDR such as 203.0.113.7/32.") from None
        if network.version != 4 or (name == "vpc_cidr" and not 16 <= network.prefixlen <= 24):
            raise ConfigError(f"{variable} must be an IPv4 CIDR (a VPC: /16 to /24), not {raw!r}.")
        return str(network)
    if name == "availability_zones":
        zones = tuple(z.strip() for z in raw.split(",") if z.strip())
        if len(zones) < 2:
            raise ConfigError(f"{variable} must name at least two zones (RDS needs two).")
        return zones
    return raw
