"""`python -m syncengine`: the `syncengine` command (cli.py)."""

from syncengine.cli import main

main()
