"""`python -m services.registry`: runs the provider registry until SIGTERM or SIGINT."""

import asyncio

from services.registry.bootstrap import run
from services.runtime.logging import configure_logging
from services.runtime.settings import load_settings

if __name__ == "__main__":
    settings = load_settings("registry")
    configure_logging("registry", settings.log_level)
    asyncio.run(run(settings))
