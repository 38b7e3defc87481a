"""``python -m podlatency`` is the ``podlatency`` command."""

from podlatency.cli import main

raise SystemExit(main())
