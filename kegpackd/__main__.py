from __future__ import annotations

from kegpackd.cli import main

raise SystemExit(main())
