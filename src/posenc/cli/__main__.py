"""``python -m posenc.cli``, as ``python -m posenc`` and the ``posenc`` console script."""

import sys

from posenc.cli import main

sys.exit(main())
