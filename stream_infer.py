"""``python stream_infer.py input=...``: the streaming command line from a checkout (installed: ``stmc-stream``).
See :mod:`stmc.apps.stream_infer`."""

from stmc.apps.stream_infer import cli

if __name__ == "__main__":
    cli()
