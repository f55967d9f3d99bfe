"""`python -m edgeft …`, which is also how `accelerate launch -m edgeft …` runs it."""

from edgeft.cli import main

main()
