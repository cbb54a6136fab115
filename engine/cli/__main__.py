"""``python -m engine.cli``, as the ``nurture`` script."""

from engine.cli import main

main()
