"""One result schema: the simulation, every theory and the PyTorch monitor give a variable of the same
name the same long name and units, and a store keeps them."""
import numpy as np
import pytest

import specdyn
from specdyn import results, storage, theory
from specdyn.config import RunConfig


def _producers(tmp_path):
    lin = RunConfig(width=24, depth=2, input_dim=4, samples=8, steps=4, top_k=2, bulk_steps=[4])
    out = {
        "simulate": specdyn.simulate(lin),
        "one_bulk": theory.one_bulk(lin, nodes=16),
        "deep_linear": theory.deep_linear(lin.replace(depth=3), nodes=16),
        "proportional": theory.proportional(RunConfig(width=16, input_dim=8, depth=1, scaling="ntk", online=True,
                                                      steps=3, top_k=2)),
        "deep_monte_carlo": theory.deep_monte_carlo(lin.replace(activation="tanh"), particles=64, replicas=2),
        "two_layer_monte_carlo": theory.two_layer_monte_carlo(lin.replace(depth=1), particles=64, replicas=2),
    }
    torch = pytest.importorskip("torch")
    from specdyn.torch import SpectralMonitor

    model = torch.nn.Sequential(torch.nn.Linear(4, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2)).double()
    with SpectralMonitor(model, top_k=2, store=tmp_path / "mon.zarr", bulk_every=1) as mon:
        mon.observe(0, loss=1.0)
        out["monitor"] = mon.dataset()
    out["monitor (stored)"] = storage.load(tmp_path / "mon.zarr")
    return out


def test_every_producer_uses_the_one_schema(tmp_path):
    seen = {}
    for who, ds in _producers(tmp_path).items():
        for name, var in ds.variables.items():
            attrs = {k: var.attrs.get(k) for k in ("long_name", "units")}
            assert attrs["long_name"] and attrs["units"] is not None, (who, name)
            first = seen.setdefault(name, (who, attrs))
            assert attrs == first[1], f"{name}: {who} says {attrs}, {first[0]} says {first[1]}"
    shared = [n for n in ("loss", "singular_values", "delta_singular_values", "normalized_sharpness", "step")
              if n in seen]
    assert len(shared) == 5
    # the same words as the table, not a copy made somewhere else
    assert seen["loss"][1] == dict(zip(("long_name", "units"), results.VARIABLES["loss"]))


def test_model_specific_meaning_is_a_description_and_unknown_names_are_refused():
    ds = theory.proportional(nu=2.0, steps=2, top_k=1)
    assert "population" in ds.loss.attrs["description"]
    assert ds.loss.attrs["long_name"] == results.VARIABLES["loss"][0]
    with pytest.raises(ValueError, match="lossy.*result schema"):
        results.dataset({"lossy": ("step", np.zeros(2))}, {"step": [0, 1]}, {})
    with pytest.raises(ValueError, match="description of 'beta_f'"):
        results.dataset({"loss": ("step", np.zeros(2))}, {"step": [0, 1]}, {}, {"beta_f": "x"})


def test_a_store_written_without_variable_attrs_still_loads_and_collects(tmp_path):
    from specdyn.sweeps import collect

    cfg = RunConfig(width=16, depth=2, input_dim=4, samples=8, steps=2, top_k=2)
    for seed in (0, 1):
        ds = specdyn.simulate(cfg.replace(seed=seed))
        if seed == 0:  # as written before the schema: no long names, no units
            for var in ds.variables.values():
                var.attrs.clear()
        storage.save(ds, tmp_path / "s.zarr", f"runs/r{seed}")
    both = collect(tmp_path / "s.zarr", dims=("width", "seed"))
    assert both.sizes["seed"] == 2 and np.isfinite(both.loss.values).all()
