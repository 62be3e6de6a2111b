"""The long-running service: the scheduler, the event watcher, the HTTP API and status page,
the job journal, webhooks and metrics.

May import: ``engine``, ``archive``, ``packaging``, ``compose`` and the shared top-level
modules.
"""
