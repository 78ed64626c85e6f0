"""`python -m cmrfm.cli`: the same as the `cmrfm` command."""

from cmrfm.cli import main

main()
