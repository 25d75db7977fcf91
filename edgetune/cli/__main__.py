"""``python -m edgetune.cli``: the ``edgetune`` command, for launchers that run a module
(``torchrun -m edgetune.cli train ...``, ``accelerate launch -m edgetune.cli train ...``)."""

from edgetune.cli import main

main()
