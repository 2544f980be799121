"""Connectors: one adapter per kind of system, found through entry points."""

from recsync.connectors.base import BulkWrite, Connector, ConnectorConfig
from recsync.connectors.registry import connector_names, get_connector_class

__all__ = ["BulkWrite", "Connector", "ConnectorConfig", "connector_names", "get_connector_class"]
