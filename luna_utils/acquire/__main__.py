"""Entry point of `python -m luna_utils.acquire`."""

from luna_utils.acquire.cli import main

raise SystemExit(main())
