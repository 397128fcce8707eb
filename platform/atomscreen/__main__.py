"""`python -m atomscreen` runs the same CLI as the `platform` console script."""

from atomscreen.cli import main

raise SystemExit(main())
