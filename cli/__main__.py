"""`python -m cli`: the `peergrid` command."""

from cli import main

main(prog_name="peergrid")
