"""``python -m rnncomp``: the ``rnncomp`` command."""
import sys

from .cli import main

sys.exit(main())
