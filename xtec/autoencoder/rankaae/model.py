"""The RankAAE model: fit, encode, decode, sweep, report, save and load."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict

import numpy as np
import xarray as xr

from xtec.autoencoder.rankaae.metrics import spearman_matrix
from xtec.autoencoder.rankaae.network import RankAAEConfig, build
from xtec.autoencoder.rankaae.training import split_indices, train
from xtec.errors import InputError, ParameterError
from xtec.io.curves import check_grid
from xtec.nn import decode_latent, load_model_file, require_torch, save_model_file

log = logging.getLogger(__name__)

MODEL_KIND = "rankaae"


def default_descriptors(spectra: xr.DataArray) -> list[str]:
    """The descriptors to constrain when none are named: every numeric coordinate
    along the spectra's first dim except those named ``nuisance_*``.

    Raises :class:`InputError` when there is none.
    """
    first = spectra.dims[0]
    names = [
        n
        for n, c in spectra.coords.items()
        if c.dims == (first,)
        and n != first
        and c.dtype.kind in "fiu"
        and not n.startswith("nuisance_")
    ]
    if not names:
        raise InputError(
            "the data have no numeric descriptor coordinates; name them with --descriptors"
        )
    return names


class RankAAE:
    """Rank-constrained adversarial autoencoder of spectra with known descriptors.

    Parameters are those of :class:`RankAAEConfig`; ``n_threads`` and
    ``progress`` only affect how training runs.

    Attributes (after :meth:`fit`)
    ------------------------------
    grid_ : (m,) energy grid
    history_ : dict of per-epoch mean losses
    train_index_, test_index_ : indices of the split used in :meth:`fit_split`
    """

    def __init__(self, *, n_threads: int | None = None, progress: bool | None = None, **params):
        unknown = set(params) - set(RankAAEConfig.__dataclass_fields__)
        if unknown:
            raise ParameterError(f"unknown parameters: {sorted(unknown)}")
        params.setdefault("descriptors", ())
        params["descriptors"] = tuple(params["descriptors"])
        self.config = RankAAEConfig(**params)
        self.config.validate()
        self.n_threads = n_threads
        self.progress = progress
        self.net_ = None
        self.train_index_ = np.empty(0, dtype=int)
        self.test_index_ = np.empty(0, dtype=int)

    # -- data plumbing
    def _arrays(
        self, spectra: xr.DataArray, need_descriptors: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        if not isinstance(spectra, xr.DataArray) or spectra.ndim != 2:
            raise InputError("expected a 2-D DataArray (spectrum, energy)")
        x = np.asarray(spectra.values, dtype=float)
        if hasattr(self, "grid_"):
            check_grid(
                spectra[spectra.dims[-1]].values, self.grid_, "the spectra's grid", "the model's"
            )
        missing = [d for d in self.config.descriptors if d not in spectra.coords]
        if missing:
            if need_descriptors:
                have = [n for n, c in spectra.coords.items() if c.dims == (spectra.dims[0],)]
                raise InputError(f"descriptor(s) {missing} not in the data; it has {have}")
            return x, None
        d = np.stack(
            [np.asarray(spectra[n].values, dtype=float) for n in self.config.descriptors], axis=1
        )
        return x, d

    def _check_fitted(self) -> None:
        if self.net_ is None:
            raise ParameterError("the model is not trained; call fit() or load() first")

    # -- training
    def fit_split(self, spectra: xr.DataArray, test_fraction: float = 0.2) -> RankAAE:
        """Hold out a seeded ``test_fraction`` of the spectra, and train on the rest."""
        train, test = split_indices(spectra.shape[0], test_fraction, self.config.seed)
        self.fit(spectra.isel({spectra.dims[0]: train}))
        self.train_index_, self.test_index_ = train, test
        self.n_split_ = int(spectra.shape[0])
        return self

    def fit(self, spectra: xr.DataArray) -> RankAAE:
        """Train on spectra (n, m) with the descriptor coordinates named in the config.

        AdamW runs ``epochs`` epochs of batches of ``batch_size``, its learning
        rate warming up linearly over the first ``warmup`` of the steps and then
        decaying along a cosine to ``lr * lr_final`` (:func:`~xtec.autoencoder.rankaae.network.lr_schedule`).

        With ``patience=0`` (the default) every spectrum is trained on for the
        whole schedule.  With ``patience > 0`` a seeded ``validation_fraction``
        is held back; every ``eval_every`` epochs the latents of those are scored
        (:func:`latent_score`: the weakest Spearman with its descriptor, minus
        the largest unwanted latent correlation); training stops when the score
        has not improved for ``patience`` evaluations, and the best-scoring
        weights are kept.  Early in the schedule, at a high learning rate, the
        score is noisy: early stopping is for a longer ``epochs`` than the
        default.
        """
        cfg = self.config
        x_all, d_all = self._arrays(spectra, need_descriptors=True)
        n_all, m = x_all.shape
        if n_all < 2:
            raise InputError(f"need at least 2 spectra to train, got {n_all}")
        if not np.all(np.isfinite(x_all)):
            raise InputError("spectra contain non-finite values")
        self.grid_ = np.asarray(spectra[spectra.dims[-1]].values, dtype=float)
        self.grid_name_ = str(spectra.dims[-1])
        start = time.perf_counter()
        out = train(x_all, d_all, cfg, n_threads=self.n_threads, progress=self.progress)
        self.x_mean_, self.x_std_ = out.x_mean, out.x_std
        self.net_ = out.net
        self.history_ = out.history
        if out.scores:
            self.history_["validation"] = np.asarray(out.scores, dtype=float)
        self.epochs_run_ = out.epochs_run
        self.best_epoch_ = out.best_epoch
        self.train_seconds_ = time.perf_counter() - start
        log.info(
            "trained RankAAE on %d spectra x %d points: %d epochs (best %d) in %.1f s",
            n_all,
            m,
            self.epochs_run_,
            self.best_epoch_,
            self.train_seconds_,
        )
        return self

    def split(self, spectra: xr.DataArray, which: str) -> xr.DataArray:
        """The ``"test"`` or ``"train"`` spectra of :meth:`fit_split` among ``spectra``, or all.

        Raises :class:`InputError` (one line) when ``spectra`` are not the set the
        model was split from, or the split is empty.
        """
        if which == "all":
            return spectra
        if which not in ("test", "train"):
            raise ParameterError(f"split must be 'test', 'train' or 'all', not {which!r}")
        n_split = getattr(self, "n_split_", None)
        if n_split != spectra.shape[0]:
            raise InputError(
                f"--split {which} needs the {n_split or '?'} spectra the model was trained from "
                f"(got {spectra.shape[0]}); use --split all for other data"
            )
        idx = self.test_index_ if which == "test" else self.train_index_
        if len(idx) == 0:
            raise InputError(f"the model has no {which} split; use --split all")
        return spectra.isel({spectra.dims[0]: idx})

    def transform(self, spectra) -> np.ndarray:
        """Latent points (n, latent_dim) of spectra (n, m)."""
        torch = require_torch()
        self._check_fitted()
        x = (
            spectra.values
            if isinstance(spectra, xr.DataArray)
            else np.asarray(spectra, dtype=float)
        )
        x = np.atleast_2d(x)
        if x.shape[1] != self.grid_.size:
            raise InputError(
                f"spectra have {x.shape[1]} points, the model expects {self.grid_.size}"
            )
        with torch.no_grad():
            z = self.net_["encoder"](
                torch.as_tensor((x - self.x_mean_) / self.x_std_, dtype=torch.float32)
            )
        return z.numpy().astype(float)

    def decode(self, latent: np.ndarray) -> np.ndarray:
        """Spectra (n, m) decoded from latent points (n, latent_dim)."""
        self._check_fitted()
        return decode_latent(self.net_["decoder"], latent, self.config.latent_dim)

    def latent_names(self) -> list[str]:
        return [*self.config.descriptors, *[f"free{i}" for i in range(self.config.n_free)]]

    def sweep(
        self,
        spectra: xr.DataArray,
        n_points: int = 7,
        percentiles: tuple[float, float] = (5.0, 95.0),
    ) -> xr.DataArray:
        """Decoded spectra as each latent dimension is swept, the others held.

        Each dimension runs from its ``percentiles[0]`` to its ``percentiles[1]``
        percentile over the latents of ``spectra``; the other dimensions stay at
        their medians.

        Returns
        -------
        DataArray (latent, step, energy) with coordinate ``value`` (latent, step).
        """
        if n_points < 2:
            raise ParameterError(f"n_points must be at least 2, not {n_points}")
        z = self.transform(spectra)
        centre = np.median(z, axis=0)
        lo, hi = np.percentile(z, percentiles, axis=0)
        out = np.empty((z.shape[1], n_points, self.grid_.size))
        values = np.empty((z.shape[1], n_points))
        for j in range(z.shape[1]):
            pts = np.repeat(centre[None], n_points, axis=0)
            pts[:, j] = np.linspace(lo[j], hi[j], n_points)
            values[j] = pts[:, j]
            out[j] = self.decode(pts)
        return xr.DataArray(
            out,
            dims=("latent", "step", self.grid_name_),
            coords={
                "latent": self.latent_names(),
                "step": np.linspace(percentiles[0], percentiles[1], n_points),
                self.grid_name_: self.grid_,
                "value": (("latent", "step"), values),
            },
            name="decoded",
        )

    def report(self, spectra: xr.DataArray) -> dict:
        """Quality of the physically organised latent on ``spectra``.

        Returns a dict with ``spearman`` (descriptor → Spearman correlation of its
        latent dimension with it), ``reconstruction_mae``, ``max_constrained_correlation``
        (largest |Spearman| between two constrained dimensions),
        ``max_latent_correlation`` (the same over all dimensions) and
        ``n_spectra``.
        """
        x, d = self._arrays(spectra, need_descriptors=False)
        z = self.transform(x)
        k = len(self.config.descriptors)
        out: dict = {"n_spectra": int(x.shape[0])}
        if d is not None:
            rho = spearman_matrix(z[:, :k], d)
            out["spearman"] = {
                name: float(rho[i, i]) for i, name in enumerate(self.config.descriptors)
            }
        out["reconstruction_mae"] = float(np.mean(np.abs(self.decode(z) - x)))
        corr = np.abs(spearman_matrix(z))
        np.fill_diagonal(corr, np.nan)
        out["max_constrained_correlation"] = float(np.nanmax(corr[:k, :k])) if k > 1 else 0.0
        out["max_latent_correlation"] = float(np.nanmax(corr)) if z.shape[1] > 1 else 0.0
        return out

    # -- persistence
    def save(self, path) -> None:
        """Write weights, configuration, grid and split to a safetensors file."""
        self._check_fitted()
        cfg = asdict(self.config)
        cfg["descriptors"] = list(cfg["descriptors"])
        arrays = {
            "grid": self.grid_,
            "x_mean": self.x_mean_,
            "train_index": np.asarray(self.train_index_, dtype=np.int64),
            "test_index": np.asarray(self.test_index_, dtype=np.int64),
        }
        for name, values in self.history_.items():
            arrays[f"history_{name}"] = values
        extras = {
            "grid_name": self.grid_name_,
            "x_std": self.x_std_,
            "train_seconds": self.train_seconds_,
            "n_split": getattr(self, "n_split_", None),
            "epochs_run": getattr(self, "epochs_run_", None),
            "best_epoch": getattr(self, "best_epoch_", None),
        }
        save_model_file(path, MODEL_KIND, cfg, self.net_.state_dict(), arrays, extras)

    @classmethod
    def load(cls, path, **kwargs) -> RankAAE:
        """Read a model written by :meth:`save` (no pickle involved)."""
        config, state, arrays, extras = load_model_file(path, MODEL_KIND)
        try:
            model = cls(**config, **kwargs)
            net = build(arrays["grid"].size, model.config)
            net.load_state_dict(state)
        except (KeyError, TypeError, RuntimeError) as exc:
            raise InputError(
                f"{path}: model file does not match its configuration ({exc})"
            ) from None
        net.eval()
        model.net_ = net
        model.grid_ = arrays["grid"]
        model.grid_name_ = extras.get("grid_name", "energy")
        model.x_mean_ = arrays["x_mean"]
        model.x_std_ = float(extras["x_std"])
        model.train_seconds_ = float(extras.get("train_seconds") or np.nan)
        model.train_index_ = arrays["train_index"]
        model.test_index_ = arrays["test_index"]
        model.epochs_run_ = extras.get("epochs_run")
        model.best_epoch_ = extras.get("best_epoch")
        if extras.get("n_split") is not None:
            model.n_split_ = int(extras["n_split"])
        model.history_ = {
            k[len("history_") :]: v for k, v in arrays.items() if k.startswith("history_")
        }
        return model
