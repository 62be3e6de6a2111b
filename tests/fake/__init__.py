"""The byte-level parts of the fake engine (``tests/fakeengine.py``): a container's files as
an in-memory tree and its archives, and an image store that parses what is loaded.

They import only the standard library and kegpackd's errors, archive and engine models: the
engine's behaviour written down here is checked against the real engines by
``tests/test_engine_contract.py``.
"""
