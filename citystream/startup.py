"""What every service command does first: read the settings and the city model, or stop with
the reason (exit status 2)."""

from __future__ import annotations

import sys

import click

from citystream.settings import ConfigError, Settings
from models.city import City, load_city
from models.errors import CityModelError


def settings_and_city() -> tuple[Settings, City]:
    """The `Settings` from the environment and the city file they name; on a bad setting or
    city file, print ``error: ...`` naming what to fix and exit with status 2."""
    try:
        settings = Settings.load()
        return settings, load_city(settings.city.file)
    except (ConfigError, CityModelError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
