"""Streaming: the stream driver (:mod:`.driver`), its engines (:mod:`.engines`), the native step (:mod:`.native`)
and the ``chunk`` parser."""
