"""The stateful test (issue 12): random sequences of admin operations, store events, time and
requests against real redis-server processes, each decision compared with the reference model
(`tests.model.spec`, `tests.model.state`). The invariants are listed in `tests.model.base`.

Run by `tests/model/test_sequences.py` (small profile) and `scripts/soak` (long).
"""

from __future__ import annotations

from tests.model.admin_rules import AdminRules
from tests.model.base import Stats
from tests.model.event_rules import EventRules
from tests.model.lifecycle import OutageAvailability
from tests.model.request_rules import RequestRules

__all__ = ["Sequences", "Stats"]


class Sequences(AdminRules, EventRules, RequestRules, OutageAvailability):
    """Every rule of the four families, on one world (`Base.world`)."""
