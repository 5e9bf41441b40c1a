"""Write tests/data/xas_larch_reference.json: Larch's pre_edge on the real XAS files.

    PYTHONPATH=<a folder with xraylarch installed> python benchmarks/xas_larch_reference.py

xraylarch is not a dependency (1.5 GB with its requirements); this script is
run once, where it is installed, and its output is what tests/test_spectra.py
compares xtec.autoencoder.spectra.normalize_edge with.  The spectra are the
ones xtec.io.curves.load_curves reads (mu(E), from raw channels where needed),
so the comparison is of the normalisation alone.  Every 5th point is kept.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_autoencoder import fetch_real_xas  # noqa: E402

from xtec.io.curves import load_curves  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "xas_larch_reference.json"


def main() -> None:
    import larch
    from larch.xafs.pre_edge import preedge

    out = {"larch_version": larch.__version__, "every": 5, "files": {}}
    for path in fetch_real_xas():
        da = load_curves(path, kind="spectrum")
        if da.attrs.get("grid_label") == "k":
            continue  # chi(k), not mu(E)
        e, mu = da.energy.values, da.values[0]
        r = preedge(e, mu)
        out["files"][path.name] = {
            "e0": float(r["e0"]),
            "edge_step": float(r["edge_step"]),
            "pre1": float(r["pre1"]),
            "pre2": float(r["pre2"]),
            "norm1": float(r["norm1"]),
            "norm2": float(r["norm2"]),
            "nnorm": int(r["nnorm"]),
            "energy": np.round(e[::5], 6).tolist(),
            "norm": np.round(r["norm"][::5], 7).tolist(),
        }
        print(path.name, out["files"][path.name]["e0"], out["files"][path.name]["edge_step"])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=0) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
