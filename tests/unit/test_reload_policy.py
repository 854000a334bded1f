"""Every setting declares what a SIGHUP does with it; the declarations are consistent."""

from __future__ import annotations

import pytest

from kick_monitor.config import ROLES, Settings, reload_policy


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_declares_a_reload_policy(name: str) -> None:
    policy = reload_policy(name)  # LookupError for a setting added without one
    assert policy.action in ("live", "restart", "service")
    assert set(policy.roles) <= set(ROLES), f"{name}: unknown role in {policy.roles}"
    if policy.action == "service":
        assert policy.roles == (), f"{name}: a service-restart setting names no roles"
    else:
        assert policy.roles, f"{name}: a {policy.action} setting must name the roles that read it"


def test_a_setting_without_a_policy_is_reported() -> None:
    from pydantic import Field, create_model

    bare = create_model("Bare", __base__=Settings, brand_new=(int, Field(1)))
    assert reload_policy("batch_size", bare).action == "live"
    with pytest.raises(LookupError, match="brand_new"):
        reload_policy("brand_new", bare)


@pytest.mark.parametrize(("name", "roles"), [
    ("heartbeat_timeout", {"coordinator", "writer"}),
    ("reload_interval", {"planner"}),
    ("drain_timeout", {"coordinator", "worker"}),
    ("client_secret", {"planner"}),  # the planner asks the API for its workers (reconcile_service)
])
def test_settings_the_roles_read_reach_every_one_of_them(name: str, roles: set[str]) -> None:
    policy = reload_policy(name)
    assert policy.action == "live"
    assert set(policy.roles) == roles
