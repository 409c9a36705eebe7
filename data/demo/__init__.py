"""The embedded demo corpus, built offline from Debian packages: ``python -m data.demo build``.

See ``data.demo.build`` for the layout and splits, ``data.demo.packages`` for what must be installed.
"""
