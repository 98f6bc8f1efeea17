"""The zoo's command-line tools, installed as console scripts (``setup.py``).

Each module is one tool with ``main(argv=None)``: ``zoo-train`` is :mod:`backbones.cli.train`,
``zoo-benchmark-ops`` is :mod:`backbones.cli.benchmark_ops`, and so on. ``python tools/<tool>.py``
runs the same ``main`` through a two-line shim. A console script exits with ``main``'s return
value, so ``main`` returns None or an exit status; tools whose results a caller wants have a
``run(argv)`` beside it that returns them.

This package imports nothing on purpose: starting one tool must not import the others.
"""
