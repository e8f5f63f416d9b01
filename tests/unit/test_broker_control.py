"""`cloud_bridge.broker_control.difference`: the plugin commands that bring a running broker's
dynamic-security rules in step with the registry, compared whole. The same commands on a real
Mosquitto 2.0.11: tests/component/test_broker_dynsec_live.py."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cloud_bridge.broker_acl import ADMIN_ROLE, AclError, DynsecConfig, dynsec_config
from cloud_bridge.broker_control import describe, difference, without_gateway

BRIDGES = ["bridge-w1"]
GATEWAY_ACLS = [  # as dynsec_config writes them for gw-a, with the priority the broker reports
    {"acltype": "publishClientSend", "topic": "kiosk/gw-a/up", "priority": 0, "allow": True},
    {"acltype": "subscribeLiteral", "topic": "kiosk/gw-a/ack", "priority": 0, "allow": True},
    {"acltype": "unsubscribeLiteral", "topic": "kiosk/gw-a/ack", "priority": 0, "allow": True},
    {"acltype": "publishClientReceive", "topic": "kiosk/gw-a/ack", "priority": 0, "allow": True},
]


def reported(config: DynsecConfig) -> DynsecConfig:
    """`config` as the running plugin reports it (Mosquitto 2.0.11's answers to listClients,
    listRoles and listGroups with verbose): each ACL with priority 0, each client with its groups."""
    report = copy.deepcopy(config)
    for role in report["roles"]:
        role["acls"] = [{**acl, "priority": acl.get("priority", 0)} for acl in role["acls"]]
    for client in report["clients"]:
        client.setdefault("groups", [])
    return report


def empty_broker() -> DynsecConfig:
    """A plugin whose file holds only the admin, and the defaults `mosquitto_ctrl dynsec init` writes."""
    admin = dynsec_config([], BRIDGES, admin_identity="admin")
    return reported(
        {
            "defaultACLAccess": {
                "publishClientSend": False,
                "publishClientReceive": True,
                "subscribe": False,
                "unsubscribe": True,
            },
            "clients": [client for client in admin["clients"] if client["username"] == "admin"],
            "groups": [],
            "roles": [role for role in admin["roles"] if role["rolename"] == ADMIN_ROLE],
        }
    )


def test_an_empty_broker_gets_everything_the_registry_grants() -> None:
    wanted = dynsec_config(["gw-a"], BRIDGES, admin_identity="admin")
    assert difference(wanted, empty_broker()) == [
        {
            "command": "setDefaultACLAccess",
            "acls": [
                {"acltype": "publishClientReceive", "allow": False},
                {"acltype": "unsubscribe", "allow": False},
            ],
        },
        {"command": "createRole", "rolename": "kiosk-bridge", "acls": reported(wanted)["roles"][1]["acls"]},
        {"command": "createRole", "rolename": "kiosk-gateway-gw-a", "acls": GATEWAY_ACLS},
        {"command": "createClient", "username": "bridge-w1", "roles": [{"rolename": "kiosk-bridge"}]},
        {"command": "createClient", "username": "gw-a", "roles": [{"rolename": "kiosk-gateway-gw-a"}]},
    ]


def test_default_access_the_broker_does_not_report_is_set() -> None:
    wanted = dynsec_config([], BRIDGES)
    current = reported(wanted)
    del current["defaultACLAccess"]["subscribe"]
    assert difference(wanted, current) == [
        {"command": "setDefaultACLAccess", "acls": [{"acltype": "subscribe", "allow": False}]}
    ]


def test_a_broker_in_step_gets_no_command() -> None:
    wanted = dynsec_config(["gw-a", "gw-b"], ["bridge-w1", "bridge-w2"], ["bridge", "g2"], "admin")
    assert difference(wanted, reported(wanted)) == []
    assert difference(dynsec_config(["gw-a"], BRIDGES), reported(dynsec_config(["gw-a"], BRIDGES))) == []


def test_a_revoked_gateway_loses_its_client_then_its_role() -> None:
    """Deleted, not disabled: Mosquitto 2.0.11 lets a disabled certificate identity reconnect
    with every right. The client goes first (its rights end at once), the role once unheld."""
    current = reported(dynsec_config(["gw-a", "gw-b"], BRIDGES, admin_identity="admin"))
    wanted = dynsec_config(["gw-b"], BRIDGES, admin_identity="admin")
    assert difference(wanted, current) == [
        {"command": "deleteClient", "username": "gw-a"},
        {"command": "deleteRole", "rolename": "kiosk-gateway-gw-a"},
    ]


def test_a_role_is_deleted_only_after_nobody_holds_it() -> None:
    """Deleting a role a client still holds crashed Mosquitto 2.0.11 at that client's next publish."""
    current = reported(dynsec_config(["gw-a", "gw-b"], BRIDGES))
    current["clients"].append(
        {
            "username": "auditor",
            "roles": [{"rolename": "kiosk-gateway-gw-a"}, {"rolename": "audit"}],
            "groups": [],
        }
    )
    current["groups"].append(
        {"groupname": "ops", "roles": [{"rolename": "kiosk-gateway-gw-a"}], "clients": []}
    )
    assert difference(dynsec_config(["gw-b"], BRIDGES), current) == [
        {"command": "deleteClient", "username": "gw-a"},
        # the operator's client and group stay; they lose only the revoked gateway's role
        {"command": "removeClientRole", "username": "auditor", "rolename": "kiosk-gateway-gw-a"},
        {"command": "removeGroupRole", "groupname": "ops", "rolename": "kiosk-gateway-gw-a"},
        {"command": "deleteRole", "rolename": "kiosk-gateway-gw-a"},
    ]


def test_entries_the_bridge_does_not_own_are_left_alone() -> None:
    wanted = dynsec_config(["gw-a"], BRIDGES, admin_identity="admin")
    current = reported(wanted)
    current["clients"] += [
        {"username": "grafana", "roles": [{"rolename": "monitoring"}], "groups": [{"groupname": "ops"}]},
        {"username": "old-tool", "roles": [], "groups": []},
        {"username": "gw-a-spare", "disabled": True, "roles": [{"rolename": "spare"}], "groups": []},
    ]
    current["roles"] += [
        {
            "rolename": "monitoring",
            "acls": [{"acltype": "subscribePattern", "topic": "$SYS/#", "allow": True}],
        },
        {"rolename": "spare", "acls": []},
    ]
    current["groups"] += [{"groupname": "ops", "roles": [{"rolename": "monitoring"}], "clients": []}]
    # the admin's role changed by the operator: theirs, not the registry's
    current["roles"][0]["acls"].append(
        {"acltype": "subscribePattern", "topic": "#", "priority": 0, "allow": True}
    )
    # a foreign role on a registry client is the operator's business too
    current["clients"][1]["roles"].append({"rolename": "monitoring"})
    assert difference(wanted, current) == []


def test_a_role_whose_acls_differ_is_fixed_in_place() -> None:
    current = reported(dynsec_config(["gw-a"], BRIDGES))  # workers' group "bridge"
    gateway_acls = current["roles"][1]["acls"]
    gateway_acls[0]["allow"] = False  # publishClientSend kiosk/gw-a/up denied
    gateway_acls.append({"acltype": "publishClientSend", "topic": "kiosk/+/up", "priority": 0, "allow": True})
    wanted = dynsec_config(["gw-a"], BRIDGES, ["g2"])
    assert difference(wanted, current) == [
        {
            "command": "removeRoleACL",
            "rolename": "kiosk-bridge",
            "acltype": "subscribeLiteral",
            "topic": "$share/bridge/kiosk/+/up",
        },
        {
            "command": "removeRoleACL",
            "rolename": "kiosk-bridge",
            "acltype": "unsubscribeLiteral",
            "topic": "$share/bridge/kiosk/+/up",
        },
        {
            "command": "addRoleACL",
            "rolename": "kiosk-bridge",
            "acltype": "subscribeLiteral",
            "topic": "$share/g2/kiosk/+/up",
            "priority": 0,
            "allow": True,
        },
        {
            "command": "addRoleACL",
            "rolename": "kiosk-bridge",
            "acltype": "unsubscribeLiteral",
            "topic": "$share/g2/kiosk/+/up",
            "priority": 0,
            "allow": True,
        },
        {
            "command": "removeRoleACL",
            "rolename": "kiosk-gateway-gw-a",
            "acltype": "publishClientSend",
            "topic": "kiosk/gw-a/up",
        },
        {
            "command": "removeRoleACL",
            "rolename": "kiosk-gateway-gw-a",
            "acltype": "publishClientSend",
            "topic": "kiosk/+/up",
        },
        {
            "command": "addRoleACL",
            "rolename": "kiosk-gateway-gw-a",
            "acltype": "publishClientSend",
            "topic": "kiosk/gw-a/up",
            "priority": 0,
            "allow": True,
        },
    ]


def test_registry_clients_get_exactly_their_roles_back() -> None:
    """A gateway holding another gateway's role or the bridge's loses it; one that lost its own
    gets it back; a disabled one is enabled (the registry says active); nobody is deleted."""
    wanted = dynsec_config(["gw-a", "gw-b"], BRIDGES)
    current = reported(wanted)
    clients: dict[str, dict[str, Any]] = {client["username"]: client for client in current["clients"]}
    clients["gw-a"]["roles"] += [{"rolename": "kiosk-bridge"}, {"rolename": "kiosk-gateway-gw-b"}]
    clients["gw-b"]["roles"] = []
    clients["bridge-w1"]["disabled"] = True
    current["clients"].append(  # an old worker's certificate: only the bridge's role
        {"username": "bridge-w0", "roles": [{"rolename": "kiosk-bridge"}], "groups": []}
    )
    assert difference(wanted, current) == [
        {"command": "removeClientRole", "username": "gw-a", "rolename": "kiosk-bridge"},
        {"command": "removeClientRole", "username": "gw-a", "rolename": "kiosk-gateway-gw-b"},
        {"command": "deleteClient", "username": "bridge-w0"},
        {"command": "enableClient", "username": "bridge-w1"},
        {"command": "addClientRole", "username": "gw-b", "rolename": "kiosk-gateway-gw-b"},
    ]


def test_revoking_one_gateway_touches_nothing_else() -> None:
    """`revoke GW --apply-to`: the broker's own rules minus that gateway, whatever the bridge
    identities and share groups are (the command does not know them)."""
    current = reported(dynsec_config(["gw-a", "gw-b"], ["bridge-w1", "bridge-w2"], ["g2"], "admin"))
    assert difference(without_gateway(current, "gw-a"), current) == [
        {"command": "deleteClient", "username": "gw-a"},
        {"command": "deleteRole", "rolename": "kiosk-gateway-gw-a"},
    ]
    assert difference(without_gateway(current, "bridge-w1"), current) == []  # not a gateway
    assert difference(without_gateway(current, "gw-unknown"), current) == []


def test_the_admin_identity_gets_the_control_topic_and_nothing_else() -> None:
    config = dynsec_config(["gw-a"], BRIDGES, admin_identity="ops-admin")
    assert config["clients"][0] == {"username": "ops-admin", "roles": [{"rolename": "kiosk-broker-admin"}]}
    assert config["roles"][0] == {
        "rolename": "kiosk-broker-admin",
        "acls": [
            {"acltype": "publishClientSend", "topic": "$CONTROL/dynamic-security/v1", "allow": True},
            {"acltype": "subscribeLiteral", "topic": "$CONTROL/dynamic-security/v1/response", "allow": True},
            {
                "acltype": "unsubscribeLiteral",
                "topic": "$CONTROL/dynamic-security/v1/response",
                "allow": True,
            },
            {
                "acltype": "publishClientReceive",
                "topic": "$CONTROL/dynamic-security/v1/response",
                "allow": True,
            },
        ],
    }
    without = dynsec_config(["gw-a"], BRIDGES)
    assert config["clients"][1:] == without["clients"] and config["roles"][1:] == without["roles"]


@pytest.mark.parametrize(
    ("admin", "message"),
    [
        ("gw-a", "'gw-a' is both the broker's admin and an enrolled gateway"),
        ("bridge-w1", "'bridge-w1' is both the broker's admin and a bridge identity"),
        ("ops admin", "admin identity 'ops admin'"),
    ],
)
def test_an_admin_identity_that_is_another_client_is_refused(admin: str, message: str) -> None:
    with pytest.raises(AclError, match=message):
        dynsec_config(["gw-a"], BRIDGES, admin_identity=admin)


def test_each_command_reads_as_one_line() -> None:
    commands = difference(dynsec_config(["gw-b"], BRIDGES, ["g2"]), empty_broker()) + difference(
        dynsec_config(["gw-b"], BRIDGES), reported(dynsec_config(["gw-a", "gw-b"], BRIDGES, ["g2"]))
    )
    assert [describe(command) for command in commands] == [
        "setDefaultACLAccess publishClientReceive deny, unsubscribe deny",
        "createRole kiosk-bridge (6 ACLs)",
        "createRole kiosk-gateway-gw-b (4 ACLs)",
        "createClient bridge-w1 with role kiosk-bridge",
        "createClient gw-b with role kiosk-gateway-gw-b",
        "deleteClient gw-a",
        "deleteRole kiosk-gateway-gw-a",
        "removeRoleACL kiosk-bridge subscribeLiteral $share/g2/kiosk/+/up",
        "removeRoleACL kiosk-bridge unsubscribeLiteral $share/g2/kiosk/+/up",
        "addRoleACL kiosk-bridge subscribeLiteral $share/bridge/kiosk/+/up allow",
        "addRoleACL kiosk-bridge unsubscribeLiteral $share/bridge/kiosk/+/up allow",
    ]
