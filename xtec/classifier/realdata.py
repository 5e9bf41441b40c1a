"""Real crystal structures from package registries, deduplicated and split by structure type.

Regenerate the shipped frequency table with ``python -m xtec.classifier.realdata OUT.json``.

Sources (fetched the way a fresh machine would, cached outside the repository):

* Debian ``libavogadro-data``: about 300 Crystallography Open Database (COD) CIFs and
  198 zeolite frameworks (``apt-get download`` + ``dpkg -x``);
* PyPI ``crystals`` 1.7.0: 87 COD CIFs (``pip download --no-deps`` + unzip);
* installed packages: pyxtal, Dans_Diffraction, pymatgen and ase ship structure files
  (:func:`xtec.classifier.structures.installed_structure_files`).

Every structure is keyed by its structure type (space group + occupied Wyckoff letters
+ anonymous formula).  :func:`split_of` puts a whole structure type either in the
"statistics" half (counted into the frequency table that the classifier uses as its
prior) or the "evaluation" half, from a hash of the key, so evaluation types are never
used for statistics.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from xtec.classifier.statistics import count
from xtec.classifier.structures import installed_structure_files, load_structures

log = logging.getLogger(__name__)

CRYSTALS_VERSION = "1.7.0"


def cache_dir() -> Path:
    """``$XTEC_CACHE`` or ``~/.cache/xtec`` (created)."""
    d = Path(os.environ.get("XTEC_CACHE", Path.home() / ".cache" / "xtec"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def fetch_avogadro(cache: Path | None = None) -> tuple[list[Path], str | None]:
    """CIFs of Debian's ``libavogadro-data``; returns (files, reason if unavailable)."""
    cache = cache or cache_dir()
    root = cache / "avogadro" / "usr/share/avogadro2/crystals"
    if not root.is_dir():
        if (cache / "libavogadro-data").is_dir():
            root = cache / "libavogadro-data" / "usr/share/avogadro2/crystals"
        else:
            why = _apt_extract("libavogadro-data", cache)
            if why:
                return [], why
            root = cache / "libavogadro-data" / "usr/share/avogadro2/crystals"
    return sorted(root.rglob("*.cif")), None


def _pip_download(spec: str, dest: Path, sdist: bool = False) -> None:
    """``pip download --no-deps`` (``--no-binary`` for an sdist) into ``dest``."""
    name = spec.split("==")[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), spec]
    if sdist:
        cmd[5:5] = ["--no-binary", name]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)


def fetch_crystals(cache: Path | None = None) -> tuple[list[Path], str | None]:
    """CIFs of PyPI's ``crystals`` wheel; returns (files, reason if unavailable)."""
    cache = cache or cache_dir()
    root = cache / "crystals" / "crystals" / "cifs"
    if not root.is_dir():
        dl = cache / "pip"
        try:
            _pip_download(f"crystals=={CRYSTALS_VERSION}", dl)
            wheel = sorted(dl.glob(f"crystals-{CRYSTALS_VERSION}-*.whl"))[-1]
            with zipfile.ZipFile(wheel) as z:
                for name in z.namelist():
                    if name.startswith("crystals/cifs/") and name.endswith(".cif"):
                        z.extract(name, cache / "crystals")
        except (subprocess.SubprocessError, OSError, IndexError, zipfile.BadZipFile) as exc:
            return [], f"pip download crystals=={CRYSTALS_VERSION} failed ({type(exc).__name__})"
    return sorted(root.glob("*.cif")), None


def _apt_extract(package: str, cache: Path) -> str | None:
    """``apt-get download PACKAGE`` + ``dpkg -x`` into ``cache / package``; the reason on failure."""
    if (cache / package).is_dir():
        return None
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        return "apt-get/dpkg not available"
    work = cache / "deb"
    work.mkdir(exist_ok=True)
    try:
        subprocess.run(
            ["apt-get", "download", package], cwd=work, check=True, capture_output=True, timeout=300
        )
        deb = sorted(work.glob(f"{package}_*.deb"))[-1]
        subprocess.run(
            ["dpkg", "-x", str(deb), str(cache / package)],
            check=True,
            capture_output=True,
            timeout=300,
        )
    except (subprocess.SubprocessError, OSError, IndexError) as exc:
        return f"apt-get download {package} failed ({type(exc).__name__})"
    return None


XRAYUTILITIES_VERSION = "1.8.0"

#: Measured powder patterns in registry packages: name -> (source, known answer).
MEASURED = {
    "LaB6": ("PyPI sdist xrayutilities 1.8.0, LaB6_d500_si_psd.xye (Cu K-alpha1+2)", 221),
    "NaCl": ("Debian fityk, samples/nacl01.dat (energy-dispersive, keV)", 225),
    "PbSO4": ("Debian objcryst-fox, tutorial-pbso4/xray.dat (Cu K-alpha1+2)", 62),
    "SiC_Zn": ("Debian fityk, samples/SiC_Zn.dat (Cu K-alpha1; SiC F-43m + Zn P6_3/mmc)", 194),
}


def fetch_measured_patterns(cache: Path | None = None) -> tuple[dict[str, Path], dict[str, str]]:
    """The measured patterns of :data:`MEASURED` as files, and why any is unavailable."""
    import bz2
    import gzip
    import tarfile

    cache = cache or cache_dir()
    out, missing = {}, {}
    why = _apt_extract("fityk", cache)
    samples = cache / "fityk" / "usr/share/fityk/samples"
    for name, file in (("NaCl", "nacl01.dat"), ("SiC_Zn", "SiC_Zn.dat")):
        if (samples / file).is_file():
            out[name] = samples / file
        else:
            missing[name] = why or f"{file} not in fityk"
    why = _apt_extract("objcryst-fox", cache)
    gz = cache / "objcryst-fox/usr/share/doc/objcryst-fox/example/tutorial-pbso4/xray.dat.gz"
    target = cache / "measured" / "pbso4_xray.dat"
    if gz.is_file() and not target.is_file():
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(gzip.decompress(gz.read_bytes()))
    if target.is_file():
        out["PbSO4"] = target
    else:
        missing["PbSO4"] = why or "xray.dat.gz not in objcryst-fox"
    target = cache / "measured" / "LaB6_d500_si_psd.xye"
    if not target.is_file():
        dl = cache / "pip"
        try:
            _pip_download(f"xrayutilities=={XRAYUTILITIES_VERSION}", dl, sdist=True)
            sdist = sorted(dl.glob(f"xrayutilities-{XRAYUTILITIES_VERSION}.tar.gz"))[-1]
            member = f"xrayutilities-{XRAYUTILITIES_VERSION}/examples/data/LaB6_d500_si_psd.xye.bz2"
            with tarfile.open(sdist) as tar:
                data = tar.extractfile(member).read()
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(bz2.decompress(data))
        except (subprocess.SubprocessError, OSError, IndexError, KeyError, tarfile.TarError) as exc:
            missing["LaB6"] = f"pip download xrayutilities failed ({type(exc).__name__})"
    if target.is_file():
        out["LaB6"] = target
    return out, missing


def collect_files(cache: Path | None = None) -> tuple[dict[str, list[Path]], dict[str, str]]:
    """Structure files per source, and the reason for each source that is unavailable."""
    files, missing = {}, {}
    for name, fetch in (("avogadro", fetch_avogadro), ("crystals", fetch_crystals)):
        f, why = fetch(cache)
        if why:
            missing[name] = why
            log.warning("%s structures unavailable: %s", name, why)
        else:
            files[name] = f
    files["installed"] = installed_structure_files()
    return files, missing


def split_of(structure_type: str, evaluation_fraction: float = 0.5) -> str:
    """``"evaluation"`` or ``"statistics"``: a fixed function of the structure-type key."""
    h = int(hashlib.sha256(structure_type.encode()).hexdigest()[:8], 16) / 2**32
    return "evaluation" if h < evaluation_fraction else "statistics"


def deduplicate(structures) -> list:
    """One structure per (structure type, reduced formula): the same compound from two
    sources (or twice in one) counts once."""
    seen, out = set(), []
    for s in structures:
        key = (s.structure_type, s.formula)
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def main(argv=None) -> int:  # pragma: no cover - regeneration script
    import argparse

    ap = argparse.ArgumentParser(
        description="Count the frequency table (statistics.json) from the statistics half."
    )
    ap.add_argument("out")
    args = ap.parse_args(argv)
    files, missing = collect_files()
    structures = []
    for name, fs in files.items():
        st, skipped = load_structures(fs)
        log.info("%s: %d structures, %d skipped", name, len(st), len(skipped))
        structures += st
    stats = [s for s in deduplicate(structures) if split_of(s.structure_type) == "statistics"]
    src = (
        "statistics half (sha256 of the structure-type key) of: "
        + ", ".join(f"{k} ({len(v)} files)" for k, v in files.items())
        + "; deduplicated by structure type + formula"
        + (
            "; unavailable: " + "; ".join(f"{k}: {v}" for k, v in missing.items())
            if missing
            else ""
        )
    )
    count(stats, src).to_json(args.out)
    print(f"{len(stats)} structures counted into {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
