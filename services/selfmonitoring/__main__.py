"""`python -m services.selfmonitoring`: runs the self-monitoring service until SIGTERM or SIGINT."""

import asyncio

from services.runtime.logging import configure_logging
from services.runtime.settings import load_settings
from services.selfmonitoring.bootstrap import run

if __name__ == "__main__":
    settings = load_settings("selfmonitoring")
    configure_logging("selfmonitoring", settings.log_level)
    asyncio.run(run(settings))
