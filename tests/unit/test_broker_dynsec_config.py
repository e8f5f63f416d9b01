"""`cloud_bridge.broker_acl.dynsec_config`: the dynamic-security plugin's file built from the
registry, compared whole. What the broker does with it: tests/component/test_broker_dynsec.py."""

from __future__ import annotations

import json

import pytest

from cloud_bridge.broker_acl import AclError, dynsec_config
from cloud_bridge.consumer import shared_filter
from contract.wire import UP_TOPIC_FILTER


def _allow(acltype: str, topic: str) -> dict[str, object]:
    return {"acltype": acltype, "topic": topic, "allow": True}


def test_one_client_per_name_one_role_per_gateway_defaults_deny() -> None:
    config = dynsec_config(
        ["gw-a", "gw b+", "gw-c"], ["bridge-w1", "bridge-w2", "bridge-w1"], ["bridge", "b2"]
    )
    assert config == {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": False,
        },
        "clients": [
            {"username": "bridge-w1", "roles": [{"rolename": "kiosk-bridge"}]},
            {"username": "bridge-w2", "roles": [{"rolename": "kiosk-bridge"}]},
            {"username": "gw-a", "roles": [{"rolename": "kiosk-gateway-gw-a"}]},
            # "gw b+" cannot be a certificate name: no client, no role (its `+` would be a wildcard)
            {"username": "gw-c", "roles": [{"rolename": "kiosk-gateway-gw-c"}]},
        ],
        "groups": [],
        "roles": [
            {
                "rolename": "kiosk-bridge",
                "acls": [
                    _allow("subscribeLiteral", "kiosk/+/up"),  # one bridge process, no --worker
                    _allow("unsubscribeLiteral", "kiosk/+/up"),
                    _allow("subscribeLiteral", "$share/bridge/kiosk/+/up"),  # workers, per group
                    _allow("unsubscribeLiteral", "$share/bridge/kiosk/+/up"),
                    _allow("subscribeLiteral", "$share/b2/kiosk/+/up"),
                    _allow("unsubscribeLiteral", "$share/b2/kiosk/+/up"),
                    _allow("publishClientReceive", "kiosk/+/up"),
                    _allow("publishClientSend", "kiosk/+/ack"),
                ],
            },
            {
                "rolename": "kiosk-gateway-gw-a",
                "acls": [
                    _allow("publishClientSend", "kiosk/gw-a/up"),
                    _allow("subscribeLiteral", "kiosk/gw-a/ack"),
                    _allow("unsubscribeLiteral", "kiosk/gw-a/ack"),
                    _allow("publishClientReceive", "kiosk/gw-a/ack"),
                ],
            },
            {
                "rolename": "kiosk-gateway-gw-c",
                "acls": [
                    _allow("publishClientSend", "kiosk/gw-c/up"),
                    _allow("subscribeLiteral", "kiosk/gw-c/ack"),
                    _allow("unsubscribeLiteral", "kiosk/gw-c/ack"),
                    _allow("publishClientReceive", "kiosk/gw-c/ack"),
                ],
            },
        ],
    }
    assert json.loads(json.dumps(config)) == config  # plain JSON, as the plugin reads it


def test_defaults_name_the_bridge_and_its_group_as_the_workers_subscribe() -> None:
    config = dynsec_config([], "kiosk-bridge")  # one name, not its letters
    assert config["clients"] == [{"username": "kiosk-bridge", "roles": [{"rolename": "kiosk-bridge"}]}]
    literal = [acl["topic"] for acl in config["roles"][0]["acls"] if acl["acltype"] == "subscribeLiteral"]
    # The exact filters the consumer subscribes to (cloud_bridge.consumer): the plugin compares
    # a SUBSCRIBE's whole filter, `$share/<group>/` included.
    assert literal == [UP_TOPIC_FILTER, shared_filter("bridge")]


@pytest.mark.parametrize(
    ("gateways", "bridges", "groups", "message"),
    [
        (
            ["gw-a"],
            ["bridge", "gw-a"],
            ["bridge"],
            "'gw-a' is both a bridge identity and an enrolled gateway",
        ),
        (["gw-a"], ["bad name"], ["bridge"], "bridge identity 'bad name'"),
        (["gw-a"], [], ["bridge"], "at least one bridge identity"),
        (["gw-a"], ["bridge"], ["a/b"], "share group 'a/b'"),
        (["gw-a"], ["bridge"], ["+"], r"share group '\+'"),
        (["gw-a"], ["bridge"], [""], "share group ''"),
    ],
)
def test_names_that_would_give_wrong_rights_are_refused(
    gateways: list[str], bridges: list[str], groups: list[str], message: str
) -> None:
    with pytest.raises(AclError, match=message):
        dynsec_config(gateways, bridges, groups)
