"""Sniffer's settings: the schema (`config.settings`) and the loader (`config.loader`)."""

from config.loader import ConfigError, load_settings
from config.settings import Settings

__all__ = ["ConfigError", "Settings", "load_settings"]
