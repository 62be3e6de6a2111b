"""The engine boundary: the only package that speaks to the engine (Docker or Podman).

``port`` is what the rest of kegpackd depends on (a Protocol over ``models``); ``client`` is
the adapter (aiodocker's public API), built on ``transport`` (session, errors, version) and
``transfers`` (streams), reading answers with ``decode``, errors with ``translate``, Podman's
differences with ``podman`` and checking references with ``refs``. ``endpoint``/``sshdial``
find and reach the engine, ``credentials`` is registry auth and ``naming`` the
image-reference grammar.

May import: the shared top-level modules (``errors``, ``shown``, ``values``). Nothing of
``archive``, ``packaging``, ``daemon`` or ``compose``.
"""
