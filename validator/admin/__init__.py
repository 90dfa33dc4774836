"""The faces for admins: the `Admin` API and the `validator-admin` command line (`admin.cli`)."""

from __future__ import annotations

from validator.admin.api import (
    Admin,
    Change,
    Explanation,
    HistoryEntry,
    ImportLine,
    PreparedPut,
    Record,
    Restriction,
    RestrictionKind,
)

__all__ = [
    "Admin",
    "Change",
    "Explanation",
    "HistoryEntry",
    "ImportLine",
    "PreparedPut",
    "Record",
    "Restriction",
    "RestrictionKind",
]
