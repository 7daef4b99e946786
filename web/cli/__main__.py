"""`python -m web.cli`: the `peergrid` command."""

from web.cli import main

main()
