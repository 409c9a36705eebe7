"""The Debian packages (main component) the demo corpus is built from, and how to install missing ones.

Standard library only, so ``python3 -m stmc.data.demo packages`` works before the virtualenv exists (the
Makefile's ``apt-deps`` target uses it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SOUNDS = Path("/usr/share/asterisk/sounds")
MOH = Path("/usr/share/asterisk/moh")
SONIC_PI = Path("/usr/share/sonic-pi/samples")

# package -> what proves it is installed: a folder it ships, or a program on PATH.
PACKAGES: dict[str, str] = {
    "asterisk-core-sounds-en-g722": str(SOUNDS / "en_US_f_Allison"),
    "asterisk-core-sounds-es-g722": str(SOUNDS / "es_MX_f_Allison"),
    "asterisk-core-sounds-fr-g722": str(SOUNDS / "fr_CA_f_June"),
    "asterisk-core-sounds-it-g722": str(SOUNDS / "it_IT_m_Carlo"),
    "asterisk-core-sounds-ru-g722": str(SOUNDS / "ru_RU_f_IvrvoiceRU"),
    "asterisk-moh-opsound-g722": str(MOH),
    "sonic-pi-samples": str(SONIC_PI),
    "espeak-ng": "espeak-ng",
    "flite": "flite",
}


def missing() -> list[str]:
    """Packages whose files or programs are not there."""
    return [
        name
        for name, proof in PACKAGES.items()
        if not (Path(proof).is_dir() if proof.startswith("/") else shutil.which(proof))
    ]


def install_command(names: list[str]) -> str:
    """The exact shell line that installs ``names`` (with ``sudo`` unless we are root)."""
    sudo = "" if os.geteuid() == 0 else "sudo "
    listed = " ".join(names)
    return f"{sudo}apt-get update && {sudo}apt-get install -y --no-install-recommends {listed}"


def versions() -> dict[str, str]:
    """Installed version of each package, from ``dpkg-query`` ("unknown" where it cannot tell)."""
    found = dict.fromkeys(PACKAGES, "unknown")
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", *PACKAGES],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    except OSError:
        return found
    for line in out.splitlines():
        name, _, version = line.partition(" ")
        if name in found and version:
            found[name] = version
    return found
