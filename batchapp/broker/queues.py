"""The queues batchapp's tasks travel on, one per kind of work.

A call someone waits on, a beat tick, and a batch chunk each have their own queue, so a job's
backlog of chunks never stands in front of a call or a tick.
"""

from __future__ import annotations

# Direct calls such as calculate_sum: short, and a caller is waiting on each.
CALLS = "batchapp.calls"
# Beat's ticks, and the single-chunk periodic jobs they start.
PERIODIC = "batchapp.periodic"
# Batch chunks: long, many, and nobody waits on one alone.
CHUNKS = "batchapp.chunks"

ALL = (CALLS, PERIODIC, CHUNKS)

# Where RabbitMQ dead-letters what a worker rejects and what passed a quorum queue's delivery
# limit (routing.py); no worker consumes it, an operator reads it (`batchapp dead-letters`).
DEAD = "batchapp.dead"
