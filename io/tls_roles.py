"""Roles in TLS certificates: what a connection's certificate lets it do.

Theory of operation
-------------------
With TLS on, every connection presents a certificate the cluster CA signed (mutual TLS,
io/transport.py). The CA says what the certificate is for by an organizational unit in
its subject (several OUs may be given; their grants add up):

    OU=raftlite-node    a node: the peer protocol (which also needs the cluster key),
                        the admin protocol (joins dial it), the client protocol with
                        membership requests
    OU=raftlite-admin   an administrator: the admin protocol, the client protocol with
                        membership requests
    OU=raftlite-client  a client: the client protocol's data requests only (OPEN,
                        PREPARE, EXEC, QUERY, INTERRUPT, FINALIZE, LEADER, CLUSTER,
                        DESCRIBE, DUMP)

Membership requests are dqlite's ADD, ASSIGN, REMOVE, TRANSFER and WEIGHT (WEIGHT steers
which nodes get which role). The transport reads the certificate once, after a
connection's first word, and refuses a connection whose word needs a role the
certificate lacks (`RoleGate.admit`: closed, counted in the transport's
`stats["role_refused"]`, logged at WARNING at most once per ROLE_WARNING_INTERVAL_S per
remote host). A dqlite client connection is served with its roles, and the session
answers a membership request it may not make with FAILURE SQLITE_AUTH (23) naming the
missing role, without running it (actors/dqlite_session.py).

Certificates without a role. An OU beginning with "raftlite-" marks a certificate as
using roles. A certificate with no such OU (every certificate issued before roles
existed) is treated as a node's, so existing TLS clusters keep working; the node logs a
WARNING the first time it sees one after it started. With `TlsSettings.require_roles`
(`raftlite node --tls-require-roles`) such a certificate grants nothing. A marked
certificate grants only the roles it names: an unknown "raftlite-..." OU (a typo, say)
grants nothing, so a mistake never turns into full access.

Without TLS there are no certificates and nothing here applies: the admin and client
protocols stay open to anyone who reaches the address, as in dqlite.
"""

import enum
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ROLE_UNITS", "CertificateRole", "CertificateRoles", "Operation", "RoleGate", "certificate_roles",
]

log = logging.getLogger("raftlite.io.tls_roles")

ROLE_UNIT_PREFIX = "raftlite-"
ROLE_WARNING_INTERVAL_S = 60.0
_WARNING_HOSTS_MAX = 1024


class CertificateRole(enum.Enum):
    NODE = "node"
    ADMIN = "admin"
    CLIENT = "client"


class Operation(enum.Enum):
    """What a connection may do, as the transport and the client session check it."""

    PEER = "the peer protocol"
    ADMIN = "the admin protocol"
    CLIENT = "the client protocol"
    MEMBERSHIP = "membership requests (ADD, ASSIGN, REMOVE, TRANSFER, WEIGHT)"


# The OU that marks each role.
ROLE_UNITS = {role: ROLE_UNIT_PREFIX + role.value for role in CertificateRole}
_ROLE_OF_UNIT = {unit: role for role, unit in ROLE_UNITS.items()}

GRANTS: Mapping[CertificateRole, frozenset[Operation]] = {
    CertificateRole.NODE: frozenset(Operation),
    CertificateRole.ADMIN: frozenset({Operation.ADMIN, Operation.CLIENT, Operation.MEMBERSHIP}),
    CertificateRole.CLIENT: frozenset({Operation.CLIENT}),
}


@dataclass(frozen=True, slots=True)
class CertificateRoles:
    """The roles one connection's certificate grants."""

    roles: frozenset[CertificateRole]
    subject: str                          # for messages: "CN=app1, OU=raftlite-client"
    marked: bool                          # it carries a raftlite-... OU
    unknown_units: tuple[str, ...] = ()   # raftlite-... OUs that name no role

    def allows(self, operation: Operation) -> bool:
        return any(operation in GRANTS[role] for role in self.roles)

    def refusal(self, operation: Operation) -> str | None:
        """Why `operation` is refused, naming the missing role; None when allowed."""
        if self.allows(operation):
            return None
        needed = [role for role in CertificateRole if operation in GRANTS[role]]
        held = ", ".join(role.value for role in CertificateRole if role in self.roles) or "none"
        why = ""
        if not self.marked:
            why = " (it carries no role and this node requires roles: --tls-require-roles)"
        elif self.unknown_units:
            why = f" (unknown role {', '.join(f'OU={unit}' for unit in self.unknown_units)})"
        return (f"the certificate {self.subject or '(no subject)'} (roles: {held}{why}) may not use {operation.value}: "
                f"it needs the {' or '.join(role.value for role in needed)} role "
                f"({' or '.join(f'OU={ROLE_UNITS[role]}' for role in needed)})")


def certificate_roles(peer_certificate: Mapping[str, Any] | None, *, require_roles: bool) -> CertificateRoles:
    """The roles of a certificate as `ssl.SSLObject.getpeercert()` gives it (None or {}:
    no certificate). See the module docstring for the rules."""
    units: list[str] = []
    common_names: list[str] = []
    for rdn in (peer_certificate or {}).get("subject", ()):
        for attribute in rdn:
            if len(attribute) != 2:
                continue
            key, value = attribute
            if key == "organizationalUnitName":
                units.append(str(value))
            elif key == "commonName":
                common_names.append(str(value))
    subject = (", ".join([f"CN={name}" for name in common_names] + [f"OU={unit}" for unit in units])
               if peer_certificate else "(no certificate)")
    marked_units = [unit for unit in units if unit.startswith(ROLE_UNIT_PREFIX)]
    if not marked_units:
        roles = frozenset() if require_roles else frozenset({CertificateRole.NODE})
        return CertificateRoles(roles=roles, subject=subject, marked=False)
    roles = frozenset(_ROLE_OF_UNIT[unit] for unit in marked_units if unit in _ROLE_OF_UNIT)
    unknown = tuple(unit for unit in marked_units if unit not in _ROLE_OF_UNIT)
    return CertificateRoles(roles=roles, subject=subject, marked=True, unknown_units=unknown)


class RoleGate:
    """The transport's side: reads a connection's roles and admits or refuses it.
    Refusals count in `stats["role_refused"]` (the transport's stats)."""

    def __init__(self, node_id: int, *, require_roles: bool, stats: dict[str, int]) -> None:
        self.node_id = node_id
        self.require_roles = require_roles
        self.stats = stats
        stats.setdefault("role_refused", 0)
        self.warned_unmarked = False
        self.warned_at: dict[str, float] = {}
        self.unlogged: dict[str, int] = {}

    def roles_of(self, peer_certificate: Mapping[str, Any] | None) -> CertificateRoles:
        """The roles of the certificate on a connection (`writer.get_extra_info("peercert")`)."""
        roles = certificate_roles(peer_certificate, require_roles=self.require_roles)
        if not roles.marked and not self.require_roles and not self.warned_unmarked:
            self.warned_unmarked = True
            log.warning("node %s: a certificate without a role connected (%s): treated as a node's (full access). "
                        "Certificates are not using roles: mark each with OU=%s, OU=%s or OU=%s and start nodes "
                        "with --tls-require-roles", self.node_id, roles.subject, ROLE_UNITS[CertificateRole.NODE],
                        ROLE_UNITS[CertificateRole.ADMIN], ROLE_UNITS[CertificateRole.CLIENT])
        return roles

    def admit(self, roles: CertificateRoles, operation: Operation, host: str) -> bool:
        """Whether `roles` allow `operation`; a refusal is counted and warned about (at
        most once per interval per remote host, with the number not logged since)."""
        refusal = roles.refusal(operation)
        if refusal is None:
            return True
        self.stats["role_refused"] += 1
        now = time.monotonic()
        last = self.warned_at.get(host)
        if last is not None and now - last < ROLE_WARNING_INTERVAL_S:
            self.unlogged[host] = self.unlogged.get(host, 0) + 1
            return False
        if len(self.warned_at) >= _WARNING_HOSTS_MAX:
            # Many hosts: forget those whose interval has passed, so the table stays bounded.
            for stale in [h for h, at in self.warned_at.items() if now - at >= ROLE_WARNING_INTERVAL_S]:
                del self.warned_at[stale]
                self.unlogged.pop(stale, None)
            if len(self.warned_at) >= _WARNING_HOSTS_MAX:
                return False   # that many hosts refused within the interval: counted, not logged
        self.warned_at[host] = now
        unlogged = self.unlogged.pop(host, 0)
        more = f" ({unlogged} more from {host} since the last warning)" if unlogged else ""
        log.warning("node %s: refused a connection: %s [from %s]%s", self.node_id, refusal, host, more)
        return False
