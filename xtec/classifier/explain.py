"""What ``xtec classify predict`` shows: the lines found, the cell, why, and a figure.

:func:`describe` turns an :class:`~.extinction.Analysis` into the JSON fields of a
prediction (status, reason, peaks, cell with figures of merit and zero shift);
:func:`plot_prediction` draws the pattern with its background, the lines found and the
positions the cell indexes.
"""

from __future__ import annotations

import numpy as np

from xtec.classifier.symmetry import crystal_system

# de Wolff: M20 above 10 is a cell to believe (with no more than a couple of unindexed
# lines); below, a cell is reported but the answer is called tentative.
M20_CONVINCING = 10.0


def describe(analysis, found, rad) -> dict:
    """JSON-ready fields: ``status``, ``reason``, ``peaks``, ``cell``, ``unexplained_lines``."""
    peaks = [
        {
            "two_theta": round(float(t), 4),
            "height": round(float(h), 2),
            "fwhm": round(float(w), 4),
            "significance": round(float(s), 1),
        }
        for t, h, w, s in zip(
            found.two_theta, found.height, found.fwhm, found.significance, strict=True
        )
    ]
    out = {
        "peaks": peaks,
        "n_lines_used": int(len(analysis.peaks.q)),
        "ka2_stripped": bool(found.ka2_stripped),
        "noise_gain": round(float(found.gain), 4),
    }
    fit = analysis.fit
    if fit is not None:
        names = {1: ["a"], 2: ["a", "c"], 3: ["a", "b", "c"], 4: ["a", "b", "c", "beta"],
                 6: ["a", "b", "c", "alpha", "beta", "gamma"]}[len(fit.params)]
        out["cell"] = {
            "system": fit.system,
            **{k: round(v, 5) for k, v in zip(names, fit.lengths(), strict=True)},
            "zero_shift": round(fit.zero, 4),
            "displacement_cos_theta": round(fit.displacement, 4),
            "lines_indexed": int(len(analysis.peaks.q) - len(analysis.unexplained)),
            "lines": int(len(analysis.peaks.q)),
            "rms_2theta": round(float(fit.rms), 4) if np.isfinite(fit.rms) else None,
            "M20": round(float(analysis.merit.get("M", 0.0)), 1),
            "F_N": round(float(analysis.merit.get("F", 0.0)), 1),
            "absences_of": list(analysis.groups[:12]),
        }
        out["unexplained_lines"] = [round(t, 3) for t in analysis.unexplained]
    out["status"] = (
        "more than one phase"
        if analysis.phases > 1
        else "indexed"
        if analysis.indexed
        else "not indexed"
    )
    out["reason"] = _reason(analysis)
    return out


def _reason(a) -> str:
    n = len(a.peaks.q)
    # The groups sharing the cell's absences, most probable first.
    groups = tuple(sorted(a.groups, key=lambda g: -a.log_scores[g - 1]))
    if n < 2:
        return f"{n} line(s) found: too few to index; the answer is the frequency prior"
    fit = a.fit
    if fit is None:
        return (
            f"no cell indexes the first {n} lines (cubic to monoclinic tried): not indexed, no "
            "space group given; triclinic, more than one phase, or lines the search missed"
        )
    cell = ", ".join(f"{v:.4f}" for v in fit.lengths())
    k = n - len(a.unexplained)
    if a.phases > 1:
        sgs = ", ".join(str(g) for g in groups[:6])
        return (
            f"no single cell indexes the {n} lines, but the strong ones index as {fit.system} "
            f"({cell} A, zero shift {fit.zero:+.3f} deg): more than one phase; the main "
            f"phase's absences are those of {crystal_system(groups[0])} groups {sgs}, "
            f"{len(a.unexplained)} lines left to the other phase(s)"
        )
    merit = a.merit.get("M", 0.0)
    text = (
        f"best cell {fit.system} ({cell} A) indexes {k} of {n} lines, M20 {merit:.1f}, "
        f"zero shift {fit.zero:+.3f} deg"
    )
    if not a.indexed:
        return (
            text + "; not enough to beat a low-symmetry cell: not indexed, no space group "
            "given (triclinic, monoclinic the search missed, or more than one phase)"
        )
    sgs = ", ".join(str(g) for g in groups[:6])
    more = " ..." if len(groups) > 6 else ""
    text += (
        f"; its systematic absences are those of {crystal_system(groups[0])} groups "
        f"{sgs}{more}, ordered by their frequency in real crystals"
    )
    if len(a.unexplained) >= 2 and k >= n / 2:
        text += f"; {len(a.unexplained)} lines unexplained: a second phase?"
    if merit < M20_CONVINCING:
        text += "; M20 below 10: tentative"
    return text


def plot_prediction(path, two_theta, counts, analysis, found, rad, title: str = "") -> None:
    """PNG of the pattern, its background, the lines found and the indexed positions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=110)
    ax.plot(two_theta, counts, lw=0.7, color="0.2", label="pattern")
    if found is not None:
        ax.plot(two_theta, found.background, lw=0.8, color="tab:green", label="background")
        h = np.interp(found.two_theta, two_theta, counts)
        ax.plot(found.two_theta, h, "v", color="tab:red", ms=5, label="lines found")
    fit = getattr(analysis, "fit", None)
    if fit is not None and len(analysis.allowed_q):
        system = fit.system
        s = rad.wavelength * np.sqrt(analysis.allowed_q) / 2
        tt = 2 * np.degrees(np.arcsin(s[s < 1])) + fit.zero
        tt = np.unique(np.round(tt[(tt > two_theta[0]) & (tt < two_theta[-1])], 4))
        lo = ax.get_ylim()[0]
        ax.vlines(
            tt,
            lo,
            lo + 0.06 * (np.max(counts) - lo),
            color="tab:blue",
            lw=0.8,
            label=f"indexed ({system})",
        )
    ax.set_xlabel(f"2-theta (deg), {rad.name}")
    ax.set_ylabel("counts")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
