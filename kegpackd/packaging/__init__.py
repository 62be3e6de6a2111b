"""One packaging job: the request and its options, the mounts, the pipeline, quiescing,
reuse, push, the markers on temporary objects, and retention.

May import: ``engine`` (through ``engine.port`` and ``engine.models`` for the engine itself;
the adapter ``engine.client`` is for the entry points), ``archive`` and the shared
top-level modules. Nothing of ``daemon`` or ``compose``.
"""
