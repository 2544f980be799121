"""Several recsyncd on one ``[cluster]``: nodes, leases with fencing tokens, failover."""

from recsync.cluster.leases import LeaseLost, LeaseRow, Leases, NodeNameTaken, NodeRow

__all__ = ["LeaseLost", "LeaseRow", "Leases", "NodeNameTaken", "NodeRow"]
