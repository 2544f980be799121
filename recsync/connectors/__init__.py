"""Connectors: one adapter per kind of system, found through entry points."""

from recsync.connectors.base import Connector, ConnectorConfig
from recsync.connectors.registry import connector_names, get_connector_class

__all__ = ["Connector", "ConnectorConfig", "connector_names", "get_connector_class"]
