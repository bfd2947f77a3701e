"""`python -m pixelpipe` runs the CLI."""

from pixelpipe.cli import main

if __name__ == "__main__":
    main()
