"""``python -m workers.browser_pool [--socket PATH] [--parent-pid PID]``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from . import __doc__ as PACKAGE_DOC
from .settings import ROOT, Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.browser_pool", description=PACKAGE_DOC.split("\n")[0])
    parser.add_argument("--socket", help="Unix socket path or http://127.0.0.1:PORT (default: BROWSER_POOL_SOCKET)")
    parser.add_argument("--parent-pid", type=int, help="exit when this process is no longer our parent")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from qwenproxy.config import load_config

    from .server import serve

    config = load_config()
    logging.basicConfig(
        level=str(config.get("LOG_LEVEL") or "INFO").upper(),
        format="%(asctime)s %(levelname)s browser-pool[%(process)d] %(message)s",
    )
    logging.getLogger("pyppeteer").setLevel(logging.WARNING)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    settings = Settings.from_config(config, address=args.socket)
    return asyncio.run(serve(settings, parent_pid=args.parent_pid))


if __name__ == "__main__":
    sys.exit(main())
