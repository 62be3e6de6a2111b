"""Compose projects: reading what Compose wrote on containers, packaging every service of a
project, and writing the Compose file of the packaged images.

May import: ``engine``, ``packaging`` and the shared top-level modules. Nothing of ``daemon``.
"""
