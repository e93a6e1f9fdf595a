"""``python -m nnparity ARGS``: the ``nnparity`` command (``nnparity.cli.main``), as the
installed script runs it; ``nnparity reproduce`` starts each of its runs this way."""

import sys

from nnparity.cli.main import main

sys.exit(main())
