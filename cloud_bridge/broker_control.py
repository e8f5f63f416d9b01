"""Bring a running broker's dynamic-security rules in step with the gateway registry, without a
restart (a restart disconnects every kiosk and vehicle).

`difference(wanted, current)` is pure: it compares the rules `broker_acl.dynsec_config` produces
with the rules the running plugin reports (the same shape) and returns the plugin's commands
that make the broker match. `DynsecAdmin` is the I/O edge: it connects as the plugin's admin (a
TLS client certificate whose name the rules grant `broker_acl.ADMIN_ROLE`), sends commands to
`$CONTROL/dynamic-security/v1` and waits for each answer. `sync` and `revoke` join the two.

What the bridge owns: the roles `kiosk-bridge` and `kiosk-gateway-*`, the clients of the bridge
identities and active gateways, and the default ACL access. Every other client, role and group
(the admin, an operator's own entries) is left as it is, except that only the registry grants
the bridge's roles: a client or group the registry does not name loses them. A client that holds
nothing but the bridge's roles (a revoked gateway, a bridge identity no longer listed) is deleted.

What Mosquitto 2.0.11 does with the commands (tests/component/test_broker_dynsec_live.py):

- createClient, createRole, addRoleACL, removeRoleACL and setDefaultACLAccess act on connected
  clients at once and disconnect nobody: the plugin checks every publish and subscribe against
  the rules of the moment. A gateway connected before its enrolment may publish after it.
- deleteClient, disableClient, addClientRole and removeClientRole disconnect every connection
  with that user name (MQTT v5 DISCONNECT 0x98, administrative action); the clients reconnect.
- disableClient does not take a right from a certificate identity: the kicked gateway
  reconnects with all its rights (the plugin looks at `disabled` when it checks a password, and
  `use_identity_as_username` gives it none to check). A revoked gateway's client is therefore
  deleted (then its role): it is disconnected and, on reconnecting, refused everything.
- The plugin writes every change back to its file, so a broker restart keeps them.
- deleteRole while a client still holds the role leaves that client pointing at freed memory:
  in a manual check the broker crashed (segfault) at that client's next publish, not every time.
  So a role is deleted only after every client and group holding it has lost it.
"""

from __future__ import annotations

import itertools
import json
import ssl
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from cloud_bridge.broker_acl import (
    BRIDGE_ROLE,
    CONTROL_RESPONSE_TOPIC,
    CONTROL_TOPIC,
    GATEWAY_ROLE_PREFIX,
    DynsecConfig,
)

__all__ = [
    "AdminTls",
    "BrokerControlError",
    "BrokerTimeout",
    "Command",
    "CommandError",
    "DynsecAdmin",
    "certificate_name",
    "describe",
    "difference",
    "owns_role",
    "read_rules",
    "revoke",
    "sync",
    "without_gateway",
]

Command = dict[str, Any]

COMMANDS_PER_MESSAGE = 100  # the plugin saves its whole file after each command: keep a message short


class BrokerControlError(Exception):
    """The broker's rules could not be read or changed; the message says where and why."""


class BrokerTimeout(BrokerControlError):
    """The broker did not answer in time."""


class CommandError(BrokerControlError):
    """The plugin refused a command; `error` is its own text ("Client not found", ...)."""

    def __init__(self, command: Command, error: str) -> None:
        super().__init__(f"the broker's dynamic-security plugin refused {describe(command)}: {error}")
        self.command = command
        self.error = error


# ---------------------------------------------------------------------------------------------
# Pure: what must change


def owns_role(rolename: str) -> bool:
    """Whether the registry manages this role (the others are the operator's)."""
    return rolename == BRIDGE_ROLE or rolename.startswith(GATEWAY_ROLE_PREFIX)


def _role_names(entry: dict[str, Any]) -> list[str]:
    return [role["rolename"] for role in entry.get("roles", [])]


def _acls(role: dict[str, Any]) -> dict[tuple[str, str], tuple[bool, int]]:
    """(acltype, topic) -> (allow, priority); the plugin keeps one of each pair per role and
    reports priority 0 for an ACL given none."""
    return {
        (acl["acltype"], acl["topic"]): (bool(acl.get("allow", False)), int(acl.get("priority", 0)))
        for acl in role.get("acls", [])
    }


def _acl(acltype: str, topic: str, allow: bool, priority: int) -> dict[str, Any]:
    # the priority compared is the priority sent (0 when the wanted ACL names none)
    return {"acltype": acltype, "topic": topic, "priority": priority, "allow": allow}


def difference(wanted: DynsecConfig, current: DynsecConfig) -> list[Command]:
    """The plugin commands that make `current` (what the broker reports) hold the registry's
    rules `wanted` (`broker_acl.dynsec_config`), in an order that is safe to apply one by one:
    rights are taken away first (a revoked gateway's client is deleted before anything else),
    a role is deleted only once nobody holds it, roles exist before clients get them. Entries
    the bridge does not own are left alone (module docstring). In step: an empty list."""
    wanted_roles = {role["rolename"]: role for role in wanted.get("roles", []) if owns_role(role["rolename"])}
    wanted_clients: dict[str, list[str]] = {}
    for client in wanted.get("clients", []):
        owned = [name for name in _role_names(client) if owns_role(name)]
        if owned:
            wanted_clients[client["username"]] = owned
    current_roles = {role["rolename"]: role for role in current.get("roles", [])}
    current_clients = {client["username"]: client for client in current.get("clients", [])}

    commands = _default_access(wanted, current)
    # 1. take rights away: from clients and groups, then the roles nobody holds any more
    for username, client in current_clients.items():
        held = _role_names(client)
        keep = wanted_clients.get(username, [])
        going = [name for name in held if owns_role(name) and name not in keep]
        if not going:
            continue
        if username not in wanted_clients and len(going) == len(held) and not client.get("groups"):
            commands.append({"command": "deleteClient", "username": username})
        else:
            commands += [
                {"command": "removeClientRole", "username": username, "rolename": name} for name in going
            ]
    for group in current.get("groups", []):
        commands += [
            {"command": "removeGroupRole", "groupname": group["groupname"], "rolename": name}
            for name in _role_names(group)
            if owns_role(name)
        ]
    commands += [
        {"command": "deleteRole", "rolename": name}
        for name in current_roles
        if owns_role(name) and name not in wanted_roles
    ]

    # 2. roles: fix the ACLs of those the broker has, create the others
    for name, role in wanted_roles.items():
        want = _acls(role)
        if name not in current_roles:
            acls = [
                _acl(acltype, topic, allow, priority) for (acltype, topic), (allow, priority) in want.items()
            ]
            commands.append({"command": "createRole", "rolename": name, "acls": acls})
            continue
        have = _acls(current_roles[name])
        commands += [
            {"command": "removeRoleACL", "rolename": name, "acltype": acltype, "topic": topic}
            for (acltype, topic), value in have.items()
            if want.get((acltype, topic)) != value
        ]
        commands += [
            {"command": "addRoleACL", "rolename": name, **_acl(acltype, topic, allow, priority)}
            for (acltype, topic), (allow, priority) in want.items()
            if have.get((acltype, topic)) != (allow, priority)
        ]

    # 3. clients: create them, give back a lost role, enable
    for username, roles in wanted_clients.items():
        client = current_clients.get(username)
        if client is None:
            commands.append(
                {"command": "createClient", "username": username, "roles": [{"rolename": n} for n in roles]}
            )
            continue
        held = _role_names(client)
        commands += [
            {"command": "addClientRole", "username": username, "rolename": name}
            for name in roles
            if name not in held
        ]
        if client.get("disabled"):
            commands.append({"command": "enableClient", "username": username})
    return commands


def _default_access(wanted: DynsecConfig, current: DynsecConfig) -> list[Command]:
    have = current.get("defaultACLAccess", {})  # the plugin reports all four; one not reported is set
    changes = [
        {"acltype": acltype, "allow": allow}
        for acltype, allow in wanted.get("defaultACLAccess", {}).items()
        if have.get(acltype) != allow
    ]
    return [{"command": "setDefaultACLAccess", "acls": changes}] if changes else []


def without_gateway(rules: DynsecConfig, gateway_id: str) -> DynsecConfig:
    """`rules` with the gateway's role taken from every client and group that holds it, and the
    role gone: compared with `rules` by `difference`, exactly that gateway's revocation."""
    gone = GATEWAY_ROLE_PREFIX + gateway_id

    def strip(entry: dict[str, Any]) -> dict[str, Any]:
        return {**entry, "roles": [role for role in entry.get("roles", []) if role["rolename"] != gone]}

    return {
        **rules,
        "clients": [strip(client) for client in rules.get("clients", [])],
        "groups": [strip(group) for group in rules.get("groups", [])],
        "roles": [role for role in rules.get("roles", []) if role["rolename"] != gone],
    }


def describe(command: Command) -> str:
    """One line for the operator: the command and what it acts on."""
    name = command["command"]
    if name == "setDefaultACLAccess":
        acls = ", ".join(f"{acl['acltype']} {'allow' if acl['allow'] else 'deny'}" for acl in command["acls"])
        return f"{name} {acls}"
    if name in ("addRoleACL", "removeRoleACL"):
        verdict = "" if name == "removeRoleACL" else (" allow" if command["allow"] else " deny")
        return f"{name} {command['rolename']} {command['acltype']} {command['topic']}{verdict}"
    if name == "createRole":
        return f"{name} {command['rolename']} ({len(command.get('acls', []))} ACLs)"
    if name == "createClient":
        return f"{name} {command['username']} with role {', '.join(_role_names(command)) or '(none)'}"
    if name in ("addClientRole", "removeClientRole"):
        return f"{name} {command['username']} {command['rolename']}"
    if name == "removeGroupRole":
        return f"{name} {command['groupname']} {command['rolename']}"
    target = command.get("username") or command.get("rolename") or command.get("groupname")
    return name if target is None else f"{name} {target}"


# ---------------------------------------------------------------------------------------------
# I/O edge: the plugin's control topic


@dataclass(frozen=True, kw_only=True)
class AdminTls:
    """The admin's TLS client certificate and key, and the CA that signed the broker's."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def certificate_name(cert_file: Path) -> str:
    """The certificate's common name: the broker's user name for it (`use_identity_as_username`)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise BrokerControlError(f"{cert_file}: not a PEM certificate ({exc})") from exc
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise BrokerControlError(f"{cert_file}: the certificate has no common name")
    return str(names[0].value)


class DynsecAdmin:
    """One MQTT v5 connection as the plugin's admin. `run` sends commands (a few per message),
    waits for the broker's PUBACK and the plugin's answer to each message, and raises
    `CommandError` for the first command the plugin refused. Use it as a context manager."""

    def __init__(self, host: str, port: int, tls: AdminTls, *, timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.identity = certificate_name(tls.cert_file)
        self._session = uuid.uuid4().hex[:12]
        self._messages = itertools.count()
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"kiosk-bridge-admin-{self._session}",
            protocol=mqtt.MQTTv5,
        )
        try:
            self._client.tls_set(
                ca_certs=str(tls.ca_file),
                certfile=str(tls.cert_file),
                keyfile=str(tls.key_file),
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (OSError, ValueError) as exc:
            raise BrokerControlError(f"the admin's TLS files: {exc}") from exc
        self._client.connect_timeout = timeout
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        self._connack: ReasonCode | None = None
        self._closed: str | None = None
        self._acks: dict[int, int] = {}  # message id -> reason code of its SUBACK or PUBACK
        self._answers: dict[str, list[dict[str, Any]]] = {}  # message tag -> the plugin's responses

    def __enter__(self) -> DynsecAdmin:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def where(self) -> str:
        return f"the broker at {self.host}:{self.port}"

    def connect(self) -> None:
        try:
            self._client.connect(self.host, self.port, keepalive=60)
        except (OSError, ValueError) as exc:  # refused, unreachable, TLS handshake (ssl.SSLError)
            raise BrokerControlError(f"cannot connect to {self.where}: {exc}") from exc
        self._wait(lambda: self._connack is not None, "the connection (CONNACK)")
        assert self._connack is not None
        if self._connack.is_failure:
            raise BrokerControlError(f"{self.where} refused {self.identity!r}: {self._connack}")
        _, mid = self._client.subscribe(CONTROL_RESPONSE_TOPIC, qos=1)
        assert mid is not None
        self._wait(lambda: mid in self._acks, f"SUBACK for {CONTROL_RESPONSE_TOPIC}")
        if self._acks[mid] >= 0x80:
            raise BrokerControlError(
                f"{self.where} does not let {self.identity!r} read the plugin's answers "
                f"({CONTROL_RESPONSE_TOPIC}, reason 0x{self._acks[mid]:02x}): is the dynamic-security "
                f"plugin loaded, and is {self.identity!r} its admin (`kiosk-bridge acl --admin-identity`)?"
            )

    def close(self) -> None:
        if self._client.socket() is not None:
            self._client.disconnect()
            self._client.loop(timeout=0.1)  # writes the DISCONNECT, closes the socket

    def run(self, commands: Sequence[Command]) -> list[dict[str, Any]]:
        """The plugin's response to each command, in order."""
        responses: list[dict[str, Any]] = []
        for start in range(0, len(commands), COMMANDS_PER_MESSAGE):
            responses += self._send(commands[start : start + COMMANDS_PER_MESSAGE])
        return responses

    def _send(self, commands: Sequence[Command]) -> list[dict[str, Any]]:
        tag = f"{self._session}-{next(self._messages)}"
        payload = {
            "commands": [{**command, "correlationData": f"{tag}:{n}"} for n, command in enumerate(commands)]
        }
        what = describe(commands[0]) + (f" and {len(commands) - 1} more" if len(commands) > 1 else "")
        info = self._client.publish(CONTROL_TOPIC, json.dumps(payload), qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerControlError(f"cannot send {what} to {self.where}: {mqtt.error_string(info.rc)}")
        self._wait(lambda: info.mid in self._acks, f"PUBACK for {what}")
        if self._acks[info.mid] >= 0x80:
            raise BrokerControlError(
                f"{self.where} refused {self.identity!r}'s commands ({CONTROL_TOPIC}, reason "
                f"0x{self._acks[info.mid]:02x}): is it the plugin's admin "
                "(`kiosk-bridge acl --admin-identity`)?"
            )
        self._wait(lambda: tag in self._answers, f"the dynamic-security plugin's answer to {what}")
        responses = self._answers.pop(tag)
        if len(responses) != len(commands):
            raise BrokerControlError(
                f"the plugin answered {len(responses)} of {len(commands)} commands ({what})"
            )
        for command, response in zip(commands, responses, strict=True):
            if "error" in response:
                raise CommandError(command, str(response["error"]))
        return responses

    def _wait(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not done():
            if self._closed is not None:
                raise BrokerControlError(f"{self.where} closed the connection ({self._closed}) before {what}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerTimeout(
                    f"{self.where} did not answer within {self.timeout:g} s (waiting for {what})"
                )
            rc = self._client.loop(timeout=min(remaining, 0.1))
            if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN) and not done():
                self._closed = self._closed or mqtt.error_string(rc)

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: ReasonCode, properties: object
    ) -> None:
        self._connack = reason

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: ReasonCode, properties: object
    ) -> None:
        self._closed = str(reason)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: object, mid: int, reasons: list[ReasonCode], properties: object
    ) -> None:
        self._acks[mid] = reasons[0].value

    def _on_publish(
        self, client: mqtt.Client, userdata: object, mid: int, reason: ReasonCode, properties: object
    ) -> None:
        self._acks[mid] = reason.value

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        try:
            responses = json.loads(message.payload)["responses"]
        except (ValueError, KeyError, TypeError):
            return  # not an answer of the plugin's
        for response in responses:
            tag = str(response.get("correlationData", "")).partition(":")[0]
            if tag.startswith(self._session):
                self._answers[tag] = responses
                return


def read_rules(admin: DynsecAdmin) -> DynsecConfig:
    """The running plugin's rules, in the shape of its file (`broker_acl.dynsec_config`)."""
    clients, roles, groups, defaults = admin.run(
        [
            {"command": "listClients", "verbose": True, "count": -1, "offset": 0},
            {"command": "listRoles", "verbose": True, "count": -1, "offset": 0},
            {"command": "listGroups", "verbose": True, "count": -1, "offset": 0},
            {"command": "getDefaultACLAccess"},
        ]
    )
    try:
        return {
            "defaultACLAccess": {acl["acltype"]: acl["allow"] for acl in defaults["data"]["acls"]},
            "clients": clients["data"]["clients"],
            "roles": roles["data"]["roles"],
            "groups": groups["data"]["groups"],
        }
    except (KeyError, TypeError) as exc:
        raise BrokerControlError(
            f"the plugin's answer to listClients/listRoles/listGroups lacks {exc}"
        ) from exc


def sync(admin: DynsecAdmin, wanted: DynsecConfig, *, dry_run: bool = False) -> list[Command]:
    """Make the running broker hold `wanted`; the commands sent (none: it was in step)."""
    commands = difference(wanted, read_rules(admin))
    if not dry_run:
        admin.run(commands)
    return commands


def revoke(admin: DynsecAdmin, gateway_id: str, *, dry_run: bool = False) -> list[Command]:
    """Take every right from one gateway on the running broker, touching nothing else."""
    current = read_rules(admin)
    commands = difference(without_gateway(current, gateway_id), current)
    if not dry_run:
        admin.run(commands)
    return commands
