"""``python -m nimbleml.cli``."""

from . import main

main()
