"""``python -m pytest_istio_mtls`` runs the ``pytest-istio-mtls`` command."""

import sys

from .commands.cli import main

sys.exit(main())
