"""Download (`apt-get download`), unpack (`dpkg-deb -x`) and describe (version, SHA-256, licences) the packages."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

from .sources import PACKAGES
from .text import log, n_words, norm_ws


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def deb_field(deb: Path, field: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), field], capture_output=True, text=True, check=True
    ).stdout.strip()


def fetch_package(name: str, version: str, cache: Path) -> dict:
    """Download `name`=`version` (else the current candidate) unless cached, unpack it; its manifest entry."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    quoted = version.replace(":", "%3a")
    found = sorted(debs.glob(f"{name}_{quoted}_*.deb"))
    note = ""
    if not found:
        r = subprocess.run(["apt-get", "download", f"{name}={version}"], cwd=debs, capture_output=True, text=True)
        found = sorted(debs.glob(f"{name}_{quoted}_*.deb"))
        if r.returncode != 0 or not found:
            prior = set(debs.glob(f"{name}_*.deb"))
            r2 = subprocess.run(["apt-get", "download", name], cwd=debs, capture_output=True, text=True)
            found = sorted(set(debs.glob(f"{name}_*.deb")) - prior) or sorted(debs.glob(f"{name}_*.deb"))
            if r2.returncode != 0 or not found:
                raise RuntimeError(
                    f"apt-get download {name} failed (run `apt-get update` first?):\n"
                    f"{r.stderr[-500:]}\n{r2.stderr[-500:]}"
                )
            note = f"pinned {version} unavailable; used the current candidate"
    deb = found[-1]
    actual = deb_field(deb, "Version")
    target = cache / "x" / name
    stamp = target / ".unpacked"
    if not stamp.exists() or stamp.read_text() != deb.name:
        if target.exists():
            subprocess.run(["rm", "-rf", str(target)], check=True)
        target.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True)
        stamp.write_text(deb.name)
    return {
        "package": name,
        "pinned": version,
        "version": actual,
        "file": deb.name,
        "sha256": sha256(deb),
        "size": deb.stat().st_size,
        "note": note,
        "root": str(target),
    }


def licence_of(root: Path, name: str) -> dict:
    """Licence names from the package's copyright file (DEP-5 `License:` short names, else a keyword scan). A doc
    folder that is a symlink to another package's (manpages-dev -> manpages) is followed into that package's
    unpacked tree when it is in the cache."""
    doc = root / "usr/share/doc" / name
    path = doc / "copyright"
    if doc.is_symlink():
        target = os.readlink(doc).strip("/").split("/")[-1]
        path = root.parent / target / "usr/share/doc" / target / "copyright"
        if not path.exists():
            return {"licences": [f"see the copyright file of package {target}"], "copyright_file": ""}
    if not path.exists():
        return {"licences": ["see the package's copyright file (not shipped in this .deb)"], "copyright_file": ""}
    text = path.read_text(encoding="utf-8", errors="replace")
    names = []
    for m in re.finditer(r"^License:[ \t]*(\S[^\n]*)$", text, re.M):
        v = m.group(1).strip()
        if n_words(v) > 8 or re.search(r"\b(is|are|the|this|to|of|under|software|hereby|permission)\b", v, re.I):
            continue
        if v not in names:
            names.append(v)
    if not names:
        keys = [
            ("GNU Free Documentation License", "GFDL"),
            ("GNU Lesser General Public", "LGPL"),
            ("GNU Library General Public", "LGPL"),
            ("GNU General Public License", "GPL"),
            ("Python Software Foundation", "PSF-2.0"),
            ("Apache License", "Apache-2.0"),
            ("public domain", "public-domain"),
            ("Permission is hereby granted", "MIT/X11-style"),
            ("Redistribution and use in source and binary forms", "BSD-style"),
            ("Artistic", "Artistic"),
            ("Creative Commons", "CC"),
            ("PostgreSQL", "PostgreSQL"),
            ("Open Publication", "OPL"),
            ("The following terms apply to all files associated with the software", "TCL (BSD-style)"),
            (
                "Permission is granted to make and distribute verbatim copies",
                "permissive verbatim/modified copying notice",
            ),
        ]
        low = norm_ws(text.lower())
        names = [short for key, short in keys if key.lower() in low]
    rel = path.relative_to(root.parent)
    return {"licences": names or ["unrecognised; see copyright file"], "copyright_file": str(rel)}


def fetch_all(names: list[str], cache: Path) -> dict[str, dict]:
    """Fetch and unpack `names` at their pinned versions; package -> manifest entry (`root`: its unpacked tree)."""
    log(f"fetching {len(names)} packages into {cache}")
    pkgs = {}
    for name in names:
        info = fetch_package(name, PACKAGES[name], cache)
        info.update(licence_of(Path(info["root"]), name))
        pkgs[name] = info
    return pkgs
