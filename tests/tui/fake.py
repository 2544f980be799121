"""A small fake recsyncd for deterministic dashboard tests: the REAL ControlServer (real
sockets) with a handler that answers fixed protocol results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from recsync.client import ControlClient
from recsync.daemon import protocol as p
from recsync.daemon.control import ControlServer
from recsync.errors import ControlError

T0 = 1_700_000_000.0  # fixed timestamps: 2023-11-14 22:13:20 UTC
ENDPOINT_SHOWN = "ipc:///run/recsync/control.sock"


def pipeline_status(customer: str, name: str, **over: Any) -> p.PipelineStatus:
    base: dict[str, Any] = dict(
        pipeline=f"{customer}/{name}",
        customer=customer,
        name=name,
        a="sqlite",
        b="salesforce",
        state="running",
        error=None,
        queued=3,
        in_flight=1,
        failed=2,
        synced_a_to_b=120,
        synced_b_to_a=8,
        conflicts=0,
        restarts=0,
        cursors={"a": '{"seq":4711}', "b": '{"ts":"2026-01-02T03:04:05.000+0000","seen":[]}'},
        settings={
            "batch_size": 200,
            "flush_interval": 1.0,
            "poll_interval": 2.0,
            "rate_limit_max": 100,
            "rate_limit_window": 60.0,
        },
    )
    base.update(over)
    return p.PipelineStatus(**base)


def pipeline_stats(status: p.PipelineStatus, rate: float = 12.5) -> p.PipelineStats:
    return p.PipelineStats(
        pipeline=status.pipeline,
        state=status.state,
        queued=status.queued,
        in_flight=status.in_flight,
        synced=status.synced_a_to_b + status.synced_b_to_a,
        failed=status.failed,
        rate=rate,
        circuit={"a": "closed", "b": "closed"},
        rate_limit={"a": (10, 100), "b": (45, 100)},
        restarts=status.restarts,
    )


RULES = {
    "contacts": {
        "a_to_b": ["create", "update", "delete"],
        "b_to_a": ["create", "update"],
        "conflict": "last_writer_wins",
        "mappings": {"record_id": "Id", "full_name": "Name", "email_address": "Email"},
        "filters": {"status": {"in": ["active", "pending"]}},
        "transforms": {},
    },
    "leads": {
        "a_to_b": ["create"],
        "b_to_a": [],
        "conflict": "a_wins",
        "mappings": {"lead_id": "Id", "company": "Company"},
        "filters": {},
        "transforms": {},
    },
}


class FakeDaemon:
    """Answers every command from fixed data; records the commands it got."""

    def __init__(self, folder: Path, pipelines: int = 3) -> None:
        self.commands: list[p.Command] = []
        customers = ["acme", "globex", "initech", "umbrella"]
        self.status = [
            pipeline_status(
                customers[i % len(customers)],
                f"people{i // len(customers)}",
                failed=i % 3,
                restarts=i % 2,
                state="running" if i % 4 else "paused",
            )
            for i in range(pipelines)
        ]
        self.stats = [pipeline_stats(s, rate=float(i)) for i, s in enumerate(self.status)]
        self.failed = [
            p.FailedRecord(
                pipeline="acme/people0",
                key="42",
                direction="a_to_b",
                attempts=3,
                last_error="record is blocked by the target",
                updated_at=T0,
            ),
            p.FailedRecord(
                pipeline="globex/people0",
                key="7",
                direction="b_to_a",
                attempts=1,
                last_error="HTTP 400: INVALID_EMAIL_ADDRESS",
                updated_at=T0 + 60,
            ),
        ]
        self.last_reload: dict[str, Any] | None = {
            "ok": False,
            "at": T0,
            "error": "customer_settings.toml, line 3: batch_size must be an integer, not 'many'",
        }
        self.config_error: str | None = self.last_reload["error"] if self.last_reload else None
        self.seq = 0
        self.command_endpoint = f"ipc://{folder}/fake-control.sock"
        self.event_endpoint = f"ipc://{folder}/fake-events.sock"
        self.server = ControlServer(
            self.handle,
            inline=lambda c: True,
            command_endpoint=self.command_endpoint,
            event_endpoint=self.event_endpoint,
        )

    def client(self) -> ControlClient:
        return ControlClient(self.command_endpoint, self.event_endpoint, timeout=2.0)

    def handle(self, cmd: p.Command) -> Any:
        self.commands.append(cmd)
        if isinstance(cmd, p.SnapshotGet):
            return {
                "seq": self.server.last_seq,
                "endpoint": ENDPOINT_SHOWN,
                "status": p.StatusResult(pipelines=self.status, config_error=self.config_error),
                "stats": self.stats,
                "failed": self.failed,
                "rules": sorted(RULES),
                "last_reload": self.last_reload,
            }
        if isinstance(cmd, p.StatusGet):
            if cmd.record_id is None:
                return p.StatusResult(pipelines=self.status, config_error=self.config_error)
            if cmd.record_id != "42":
                raise ControlError("NOT_FOUND", f"record {cmd.record_id!r} is not known")
            return p.StatusResult(
                records=[
                    p.RecordStatus(
                        pipeline="acme/people0",
                        key="42",
                        state="failed",
                        direction="a_to_b",
                        attempts=3,
                        last_error="record is blocked by the target",
                        on_a=True,
                        on_b=False,
                        synced_at=None,
                        history=[
                            p.HistoryEntry(T0 - 120, "queued", "create from a"),
                            p.HistoryEntry(T0 - 60, "failed", "record is blocked by the target"),
                            p.HistoryEntry(T0, "failed", "record is blocked by the target"),
                        ],
                    )
                ]
            )
        if isinstance(cmd, p.FailedList):
            return [
                f
                for f in self.failed
                if cmd.customer is None or f.pipeline.startswith(cmd.customer + "/")
            ]
        if isinstance(cmd, p.StatsGet):
            return self.stats
        if isinstance(cmd, p.RulesShow):
            return RULES
        if isinstance(cmd, p.RetryRecord):
            return p.CountResult(1, ["acme/people0"])
        if isinstance(cmd, p.RetryFailed):
            return p.CountResult(len(self.failed))
        if isinstance(cmd, p.ConfigOverride):
            return p.CountResult(1, [f"{cmd.customer}/{cmd.pipeline}"])
        if isinstance(cmd, p.Pause | p.Resume):
            return self.set_state(cmd, "paused" if isinstance(cmd, p.Pause) else "running")
        if isinstance(cmd, p.SyncNow):
            return p.CountResult(1, [self.find(cmd.customer, cmd.pipeline).pipeline])
        if isinstance(cmd, p.Reload):
            raise ControlError("INVALID", self.config_error or "nothing")
        raise ControlError("UNKNOWN_COMMAND", type(cmd).__name__)

    def find(self, customer: str, name: str | None) -> p.PipelineStatus:
        for status in self.status:
            if status.customer == customer and status.name == name:
                return status
        raise ControlError("NOT_FOUND", f"no pipeline {customer}/{name}")

    def set_state(self, cmd: p.Pause | p.Resume, state: str) -> p.CountResult:
        """Pause or resume: the state changes, and the events tell the dashboard."""
        found = self.find(cmd.customer, cmd.pipeline)
        self.change(found.pipeline, state=state)
        return p.CountResult(1, [found.pipeline])

    def change(self, pipeline: str, **fields: Any) -> p.PipelineStatus:
        """Change a pipeline's status (as the next status.get shows it); publish its
        ``pipeline_state`` event when the state or error changes, and a stats event."""
        i = next(n for n, s in enumerate(self.status) if s.pipeline == pipeline)
        old = self.status[i]
        new = self.status[i] = msgspec.structs.replace(old, **fields)
        self.stats[i] = pipeline_stats(new, rate=self.stats[i].rate)
        if (new.state, new.error) != (old.state, old.error):
            self.server.publish(
                "pipeline_state",
                {"pipeline": pipeline, "state": new.state, "error": new.error,
                 "restarts": new.restarts},
            )
        self.server.publish("stats", {"pipelines": msgspec.to_builtins(self.stats)})
        return new

    def __enter__(self) -> FakeDaemon:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
