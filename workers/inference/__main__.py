"""``python -m workers.inference -m PATH [...]``: run the worker (see ``server.main``)."""

from .server import main

main()
