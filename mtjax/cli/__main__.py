"""`python -m mtjax.cli`."""

from . import main

main()
