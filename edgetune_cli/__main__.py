"""``python -m edgetune_cli``: the ``edgetune`` command, for launchers that run a module
(``torchrun -m edgetune_cli train ...``, ``accelerate launch -m edgetune_cli train ...``)."""

from edgetune_cli import main

main()
