"""Run the command line with `python -m ocilayer`."""

from ocilayer.cli import entry_point

entry_point()
