"""Library pieces the autoencoder CLI calls: output check, tables, errors, descriptor choice."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import xarray as xr

from xtec.autoencoder.outputs import (
    check_output,
    estimate_errors,
    write_embed_table,
    write_relevance_table,
)
from xtec.autoencoder.rankaae import RankAAE, default_descriptors
from xtec.autoencoder.synthetic import synthetic_spectra
from xtec.errors import InputError


def _embedded(n=5):
    first = "pattern"
    ds = xr.Dataset(
        {
            "latent": ((first, "latent_dim"), np.arange(2 * n, dtype=float).reshape(n, 2)),
            "cluster": ((first,), np.zeros(n, int)),
            "strain": ((first,), np.linspace(-0.01, 0.01, n)),
            "composition_estimate": ((first,), np.linspace(0, 1, n) + 0.01),
            "composition_uncertainty": ((first,), np.full(n, 0.02)),
        },
        coords={"composition": ((first,), np.linspace(0, 1, n))},
    )
    data = xr.DataArray(np.ones((n, 3)), dims=(first, "two_theta"), coords=dict(ds.coords))
    return ds, data


def test_estimate_errors_and_embed_table(tmp_path):
    ds, data = _embedded()
    errors = estimate_errors(ds, data, ["composition", "phase_fraction"])
    assert list(errors) == ["composition"]
    mae, cover = errors["composition"]
    assert mae == pytest.approx(0.01) and cover == 1.0
    path = tmp_path / "t.csv"
    write_embed_table(ds, ["composition"], path)
    rows = list(csv.reader(path.open()))
    assert rows[0] == [
        "index",
        "composition",
        "z0",
        "z1",
        "cluster",
        "strain",
        "composition_estimate",
        "composition_uncertainty",
    ]
    assert len(rows) == 6


def test_relevance_table_most_relevant_first(tmp_path):
    rel = xr.Dataset(
        {k: ("peak", np.arange(3.0)) for k in ("position", "height", "lo", "hi")}
        | {
            "latent_shift": ("peak", [0.1, 0.5, 0.2]),
            "relevance": ("peak", [0.2, 1, 0.4]),
            "rank": ("peak", [3, 1, 2]),
        }
    )
    path = tmp_path / "r.csv"
    write_relevance_table(rel, path)
    rows = list(csv.reader(path.open()))
    assert [r[0] for r in rows[1:]] == ["1", "2", "3"]


def test_check_output_refuses_a_file_as_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        check_output(blocker / "model.safetensors")
    check_output(tmp_path / "new" / "model.safetensors")  # a folder still to be made


def test_default_descriptors_and_split_refusals():
    spectra = synthetic_spectra(10, seed=0)
    assert default_descriptors(spectra) == ["edge_shift", "white_line", "pre_edge", "bond_length"]
    with pytest.raises(InputError, match="no numeric descriptor"):
        default_descriptors(spectra.drop_vars(default_descriptors(spectra)))
    model = RankAAE(descriptors=["edge_shift"])
    assert model.split(spectra, "all") is spectra
    with pytest.raises(InputError, match="--split test needs"):
        model.split(spectra, "test")
