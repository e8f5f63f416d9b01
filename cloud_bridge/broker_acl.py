"""The broker's access rules, generated from the gateway registry: each gateway reaches its own
topics only, a revoked gateway none, and only the bridge reads the gateways' batches.

Two forms of the same rules, for Mosquitto with `use_identity_as_username` (a client's user name
is the common name of the TLS certificate the community's CA issued it, `cloud_bridge.pki`):

- `dynsec_config`, the file of Mosquitto's dynamic-security plugin (`plugin_opt_config_file`).
  Deploy this one: the plugin checks every SUBSCRIBE. Gateway `gw-X` may publish `kiosk/gw-X/up`
  and subscribe to and receive `kiosk/gw-X/ack`; each bridge identity may subscribe to
  `kiosk/+/up` (one bridge process) and `$share/<group>/kiosk/+/up` (workers), receive every
  `up` and publish every `ack`; the defaults deny the rest, unsubscribing too (so each client may
  unsubscribe exactly the filters it may subscribe to). A broker reads the file when it starts;
  a running one gets the same rules live, with no restart, over the plugin's control topic
  (`kiosk-bridge acl --format dynsec --apply-to HOST:PORT`, cloud_bridge/broker_control.py), as
  the plugin's admin: the certificate name `dynsec_config(admin_identity=…)` grants `ADMIN_ROLE`.
- `render_acl`, an `acl_file`. Mosquitto never checks a SUBSCRIBE against it, so any certificate
  from the CA can join the workers' shared subscription (below). Send a SIGHUP after writing it.

What Mosquitto 2.0.11 does with them (tests/component/test_broker_acl.py, test_broker_dynsec.py):

`acl_file`: every subscription is granted, `$share/…` too; each message is checked for *read*
on its own topic when it is delivered, also through a shared subscription (`topic read
kiosk/+/up` is the rule that counts, a rule naming `$share/…` grants nothing). A member of a
shared subscription that may not read a message still takes its turn: Mosquitto drops the
message for the whole group rather than give it to another member.

dynamic security: a SUBSCRIBE is checked on the whole filter as sent, `$share/<group>/` included,
so `kiosk/+/up` does not grant `$share/bridge/kiosk/+/up` (it is listed on its own, per group);
a refused filter gets SUBACK 0x87 and the client never joins the group. Delivered messages are
checked on their own topic (`publishClientReceive kiosk/+/up`). A certificate name the file does
not list still connects (with `use_identity_as_username` the plugin sees no password to check)
but every publish and subscribe is refused. The plugin reads its file when the broker starts; a
SIGHUP does not reload it; a missing or broken file denies everything. Its control topic changes
the rules of the running broker instead (what 2.0.11 does then: cloud_bridge/broker_control.py,
tests/component/test_broker_dynsec_live.py); the plugin writes each change back to its file.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from typing import Any

from cloud_bridge.db import Database
from contract.wire import UP_TOPIC_FILTER, ack_topic, up_topic

BRIDGE_IDENTITY = "kiosk-bridge"
SHARE_GROUP = "bridge"  # the workers' default (`kiosk-bridge run --share-group`)
BRIDGE_ROLE = "kiosk-bridge"
GATEWAY_ROLE_PREFIX = "kiosk-gateway-"
# The plugin's admin: sends commands to its control topic and reads the answers, nothing else.
ADMIN_ROLE = "kiosk-broker-admin"
CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
CONTROL_RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
# A certificate common name as the community's CA issues it (cloud_bridge.pki): one rule each.
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

DynsecConfig = dict[str, Any]


class RulesFormat(enum.StrEnum):
    """The file `kiosk-bridge acl` writes."""

    acl_file = "acl-file"
    dynsec = "dynsec"


class AclError(ValueError):
    """Rules that would give a client the wrong rights; the message says which name and why."""


def active_gateway_ids(conn: Database) -> list[str]:
    rows = conn.execute("SELECT gateway_id FROM gateways WHERE status = 'active' ORDER BY gateway_id")
    return [gateway_id for (gateway_id,) in rows]


def is_certificate_name(name: str) -> bool:
    """Whether `name` can be a client's identity: a common name the community's CA issues."""
    return bool(_NAME.match(name))


def _checked_names(
    gateway_ids: Iterable[str], bridge_identities: str | Sequence[str], admin_identity: str | None = None
) -> tuple[list[str], list[str]]:
    """(bridge identities, gateway ids) to write rules for, each once and in order.

    A gateway id that cannot be a certificate name is left out (no certificate could carry it, so
    it cannot connect; written out, a `+` or `#` in it would be a wildcard). Refuses a bridge
    identity that is not a certificate name, and one that is also a gateway's id (the two would
    be one broker user: that gateway would read every gateway's batches); likewise an admin
    identity that is also a gateway's or a bridge's (that device could rewrite every rule)."""
    bridges = [bridge_identities] if isinstance(bridge_identities, str) else list(bridge_identities)
    bridges = list(dict.fromkeys(bridges))
    gateways = [gateway_id for gateway_id in dict.fromkeys(gateway_ids) if is_certificate_name(gateway_id)]
    if not bridges:
        raise AclError("at least one bridge identity is needed")
    for name in bridges:
        if not is_certificate_name(name):
            raise AclError(f"bridge identity {name!r}: 1-64 letters, digits, '_', '.' or '-'")
    clash = sorted(set(bridges) & set(gateways))
    if clash:
        raise AclError(f"{clash[0]!r} is both a bridge identity and an enrolled gateway")
    if admin_identity is not None:
        if not is_certificate_name(admin_identity):
            raise AclError(f"admin identity {admin_identity!r}: 1-64 letters, digits, '_', '.' or '-'")
        if admin_identity in gateways:
            raise AclError(f"{admin_identity!r} is both the broker's admin and an enrolled gateway")
        if admin_identity in bridges:
            raise AclError(f"{admin_identity!r} is both the broker's admin and a bridge identity")
    return bridges, gateways


def render_acl(
    gateway_ids: Iterable[str], bridge_identities: str | Sequence[str] = (BRIDGE_IDENTITY,)
) -> str:
    """The `acl_file` text: read/ack rights for each bridge identity, own topics for each gateway.
    Names are checked as `_checked_names` says."""
    bridges, gateways = _checked_names(gateway_ids, bridge_identities)
    lines = [
        "# Generated by `kiosk-bridge acl` from the gateway registry. Do not edit: regenerate.",
        "# Anything not granted here is refused. User names are certificate common names",
        "# (use_identity_as_username). Mosquitto checks read access on each message's own topic,",
        "# also through the workers' shared subscription $share/<group>/kiosk/+/up.",
    ]
    for identity in bridges:
        lines += ["", f"user {identity}", f"topic read {up_topic('+')}", f"topic write {ack_topic('+')}"]
    for gateway_id in gateways:
        lines += [
            "",
            f"user {gateway_id}",
            f"topic write {up_topic(gateway_id)}",
            f"topic read {ack_topic(gateway_id)}",
        ]
    return "\n".join(lines) + "\n"


def mosquitto_acl(conn: Database, bridge_identities: str | Sequence[str] = (BRIDGE_IDENTITY,)) -> str:
    """`render_acl` for the registry's active gateways."""
    return render_acl(active_gateway_ids(conn), bridge_identities)


def _allow(acltype: str, topic: str) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "allow": True}


def _subscription(topic_filter: str) -> list[dict[str, Any]]:
    """Subscribe to exactly this filter, and unsubscribe from it again (the defaults deny both)."""
    return [_allow("subscribeLiteral", topic_filter), _allow("unsubscribeLiteral", topic_filter)]


def dynsec_config(
    gateway_ids: Iterable[str],
    bridge_identities: str | Sequence[str] = (BRIDGE_IDENTITY,),
    share_groups: Sequence[str] = (SHARE_GROUP,),
    admin_identity: str | None = None,
) -> DynsecConfig:
    """The dynamic-security plugin's configuration (its JSON file, as a dict): one client per
    bridge identity with the bridge's role, one client and one role per gateway, defaults that
    deny. Clients have no password: their certificate is their identity. With `admin_identity`,
    that certificate name also gets `ADMIN_ROLE`, the plugin's control topic and its answers, so
    it can change the rules of the running broker. Names are checked as `_checked_names` says; a
    share group may not be empty or hold '/', '+' or '#'."""
    bridges, gateways = _checked_names(gateway_ids, bridge_identities, admin_identity)
    groups = list(dict.fromkeys(share_groups))
    for group in groups:
        if not group or any(c in group for c in "/+#"):
            raise AclError(f"share group {group!r}: not empty, and no '/', '+' or '#'")
    bridge_filters = [UP_TOPIC_FILTER, *(f"$share/{group}/{UP_TOPIC_FILTER}" for group in groups)]
    bridge_role = {
        "rolename": BRIDGE_ROLE,
        "acls": [
            *(acl for topic_filter in bridge_filters for acl in _subscription(topic_filter)),
            _allow("publishClientReceive", UP_TOPIC_FILTER),
            _allow("publishClientSend", ack_topic("+")),
        ],
    }
    gateway_roles = [
        {
            "rolename": GATEWAY_ROLE_PREFIX + gateway_id,
            "acls": [
                _allow("publishClientSend", up_topic(gateway_id)),
                *_subscription(ack_topic(gateway_id)),
                _allow("publishClientReceive", ack_topic(gateway_id)),
            ],
        }
        for gateway_id in gateways
    ]
    admin_clients: list[dict[str, Any]] = []
    admin_roles: list[dict[str, Any]] = []
    if admin_identity is not None:
        admin_clients = [{"username": admin_identity, "roles": [{"rolename": ADMIN_ROLE}]}]
        admin_roles = [
            {
                "rolename": ADMIN_ROLE,
                "acls": [
                    _allow("publishClientSend", CONTROL_TOPIC),
                    *_subscription(CONTROL_RESPONSE_TOPIC),
                    _allow("publishClientReceive", CONTROL_RESPONSE_TOPIC),
                ],
            }
        ]
    return {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": False,
        },
        "clients": [
            *admin_clients,
            *({"username": name, "roles": [{"rolename": BRIDGE_ROLE}]} for name in bridges),
            *(
                {"username": gateway_id, "roles": [{"rolename": GATEWAY_ROLE_PREFIX + gateway_id}]}
                for gateway_id in gateways
            ),
        ],
        "groups": [],
        "roles": [*admin_roles, bridge_role, *gateway_roles],
    }
