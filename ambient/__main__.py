"""`python -m ambient` is the `ambient` command."""

from ambient.cli import main

main()
