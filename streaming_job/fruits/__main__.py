"""``python -m fruits`` is the ``fruits`` command."""

from .cli import main

main()
