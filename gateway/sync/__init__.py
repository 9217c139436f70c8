"""The identity sync: the gateway's identity store kept equal to an unmodified Backend.AI's.

Backend.AI keeps its keypairs, users, projects (groups), memberships and domains in the
manager's PostgreSQL; they change every day, and a copy imported by hand goes stale. The sync
reads them whole, in one consistent snapshot (:mod:`.snapshot`), turns them into what the
store should hold by Backend.AI's own rules, compares that with what the store holds
(:mod:`.diff`: only what the syncer owns or Backend.AI has may change; a snapshot that would
remove or deactivate too many keypairs at once is refused) and writes the difference through
the store's ordinary writes (:mod:`.apply`), so every replica re-checks its open streams as
for any other change. :func:`sync_once` (:mod:`.syncer`) is one round.

Tables and columns mirrored (``../shared/BACKENDAI.md`` §2.1), the same from manager 23.09
(``manager/models/keypair.py``, ``user.py``, ``group.py``, ``domain.py``) to 26.8 and HEAD
(``manager/models/keypair/row.py``, ``user/row.py``, ``group/row.py``, ``domain/row.py``):
``keypairs(access_key, secret_key, is_active, is_admin, "user")``, ``users(uuid, email,
role, status, domain_name)``, ``groups(id, name, domain_name, is_active)``,
``association_groups_users(user_id, group_id)``, ``domains(name, is_active)``. A read-only
role granted ``SELECT`` on just these columns is enough; ``keypairs.secret_key`` is plaintext,
so that role is as sensitive as the manager's own.
"""

from .apply import SyncKeys, apply, read_managed, read_state
from .diff import Changes, check_removals, diff
from .errors import SourceUnavailable, SyncError, SyncRefused
from .snapshot import Snapshot, desired, read_snapshot
from .state import Managed, StoreState
from .syncer import DEFAULT_MAX_REMOVAL_SHARE, SyncReport, sync_once

__all__ = [
    "DEFAULT_MAX_REMOVAL_SHARE",
    "Changes",
    "Managed",
    "Snapshot",
    "SourceUnavailable",
    "StoreState",
    "SyncError",
    "SyncKeys",
    "SyncRefused",
    "SyncReport",
    "apply",
    "check_removals",
    "desired",
    "diff",
    "read_managed",
    "read_snapshot",
    "read_state",
    "sync_once",
]
