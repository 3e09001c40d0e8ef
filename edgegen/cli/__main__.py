"""``python -m edgegen.cli``: the same CLI, for launchers such as torchrun that take a module."""

from edgegen.cli import main

main()
