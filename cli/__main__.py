"""``python -m styleprefs.cli``, as launchers such as ``accelerate launch -m`` start it."""

from styleprefs.cli.app import main

main()
