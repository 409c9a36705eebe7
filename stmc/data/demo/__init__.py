"""The embedded demo corpus, built offline from Debian packages: ``python -m stmc.data.demo build``.

See ``stmc.data.demo.build`` for the layout and splits, ``stmc.data.demo.packages`` for what must be installed.
"""
