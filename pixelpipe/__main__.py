"""`python -m pixelpipe` runs the CLI."""

from pixelpipe.cli import main

main()
