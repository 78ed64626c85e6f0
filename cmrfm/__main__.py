"""`python -m cmrfm ...`: the `cmrfm` command where its console script is not installed, e.g. a
source checkout on PYTHONPATH under another Python (a GPU host's own image)."""

from cmrfm.cli import main

if __name__ == "__main__":
    main()
