"""Pure archive formats: the tar scanner and headers, exclude rules, and the docker-archive
and OCI layout writers. Bytes in, bytes out.

May import: ``kegpackd.errors`` and each other. Nothing of the engine, and not anyio: this
code runs the same in a worker thread, a test or a fuzzer.
"""
