"""The aws provider's network and database options are settings like the others: environment
variables or ``[tool.envkit]``, checked by the provider, naming the variable when wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from envkit.errors import ConfigError
from envkit.providers.aws.options import AwsOptions
from envkit.settings import Settings


def test_options_come_from_pyproject_or_the_environment(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.envkit]\naws_egress = "nat"\naws_public = true\naws_ci_cidr = "203.0.113.7/32"\n'
    )
    settings = Settings.resolve({"home": tmp_path / "home"}, env={}, cwd=tmp_path)
    options = AwsOptions.from_env({}, settings)
    assert (options.egress, options.public, options.ci_cidr) == ("nat", True, "203.0.113.7/32")
    assert options.explicit == {"egress", "public", "ci_cidr"}
    env = {"ENVKIT_AWS_SPOT": "yes", "ENVKIT_AWS_AZS": "eu-west-1a,eu-west-1b"}
    from_env = AwsOptions.from_env(env, Settings.resolve({"home": tmp_path}, env=env))
    assert from_env.spot and from_env.availability_zones == ("eu-west-1a", "eu-west-1b")


def test_a_bad_option_names_its_variable(tmp_path: Path) -> None:
    settings = Settings.resolve({"home": tmp_path}, env={"ENVKIT_AWS_EGRESS": "satellite"})
    with pytest.raises(ConfigError, match="ENVKIT_AWS_EGRESS"):
        AwsOptions.from_env({}, settings)
