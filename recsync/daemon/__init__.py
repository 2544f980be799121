"""recsyncd: the record-sync daemon."""

from recsync.daemon.app import Daemon, PipelineReport
from recsync.daemon.main import main

__all__ = ["Daemon", "PipelineReport", "main"]
