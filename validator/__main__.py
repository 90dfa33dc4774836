"""`python -m validator`: the admin command line, `validator-admin`."""

from __future__ import annotations

from validator.admin.cli import main

raise SystemExit(main())
