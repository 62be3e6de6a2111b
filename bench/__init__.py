"""The benchmark harness (``python -m bench.run``) and the scanner speed bench."""
