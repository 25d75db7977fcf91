"""``python -m edgetune.cli``: the same as the ``edgetune`` console script."""

from edgetune.cli import main

main()
