"""``python -m nodulegrowth`` is the ``nodulegrowth`` command."""
import sys

from .cli import main

sys.exit(main())
