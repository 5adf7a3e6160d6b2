"""`python -m services.tendering`: runs the tendering service until SIGTERM or SIGINT."""

import asyncio

from services.runtime.logging import configure_logging
from services.runtime.settings import load_settings
from services.tendering.bootstrap import run

if __name__ == "__main__":
    settings = load_settings("tendering")
    configure_logging("tendering", settings.log_level)
    asyncio.run(run(settings))
