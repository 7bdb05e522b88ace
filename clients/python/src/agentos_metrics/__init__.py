"""AgentOS Metrics for Agno applications: a publisher that never stands in the way, a one-line
Agno integration, and the import of an Agno database's history (`agentos-metrics backfill`).

    from agentos_metrics import instrument
    instrument(agent)          # an Agent, Team, Workflow or AgentOS
"""

from agentos_metrics.agno import MetricsHook, default_publisher, instrument
from agentos_metrics.events import event_id, run_completed, session_created
from agentos_metrics.publisher import Publisher, PublisherConfig, PublisherStats

__all__ = [
    "MetricsHook",
    "Publisher",
    "PublisherConfig",
    "PublisherStats",
    "default_publisher",
    "event_id",
    "instrument",
    "run_completed",
    "session_created",
]
