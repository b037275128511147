"""The proportional many-output limit (docs/theory.md, "Many outputs: the proportional limit")
against closed forms (Marchenko-Pastur at t = 0, the step-1 moments) and against the plain
NumPy population GD of the full matrices, with tolerances from the spread between seeds."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from specdyn import rmt
from specdyn.theory import many_outputs as mo

SETTING = dict(alpha_d=1.0, rate=0.15, steps=10)


def _moments(ds, alpha_d):
    """(1/N) tr A A^T and (1/N) tr (A A^T)^2 from the density (normalized over min(N, D) values)."""
    s = ds.s.values
    share = min(1.0, alpha_d)
    return (share * np.trapezoid(s**2 * ds.singular_value_density.values, s, axis=-1),
            share * np.trapezoid(s**4 * ds.singular_value_density.values, s, axis=-1))


@pytest.mark.parametrize("alpha_d", [0.5, 1.0, 2.0])
def test_initial_density_is_marchenko_pastur(alpha_d):
    ds = mo.many_outputs_density(0.3, alpha_d, 0.2, 0, grid=300, sigma=1.3)
    s = ds.s.values
    # A(0) is N x D with entries N(0, sigma^2 / D): squared singular values MP with ratio N / D
    expect = 2 * s * rmt.marchenko_pastur_density(s**2, 1 / alpha_d, 1.3)
    assert np.trapezoid(abs(ds.singular_value_density.isel(step=0).values - expect), s) < 1e-6
    assert ds.bulk_edge.isel(step=0) == pytest.approx(rmt.singular_value_edge(1 / alpha_d, 1.3), rel=1e-9)
    assert not bool(ds.island_isolated.isel(step=0))


@settings(max_examples=4, deadline=None)
@given(kappa=st.floats(0.05, 2.0), alpha_d=st.floats(0.5, 2.0), rate=st.floats(0.05, 0.5),
       sigma_readout=st.floats(0.0, 1.5), tau=st.floats(0.3, 1.5))
def test_step_one_moments_closed_form(kappa, alpha_d, rate, sigma_readout, tau):
    # one step from the zero-error start: A(1) = A(0) + (c / alpha_D) B(0)^T T exactly, so with
    # rho = C / D:  (1/N) tr A A^T = 1 + sr^2 c^2 tau^2 rho / alpha_D and the second moment of
    # g = 1 + sr^2 c^2 r / alpha_D over the law of r (E r = tau^2 rho, E r^2 = tau^4 rho (1 + rho))
    # enters (1/N) tr (A A^T)^2 = E g^2 / alpha_D + (E g)^2.
    ds = mo.many_outputs_density(kappa, alpha_d, rate, 1, sigma_readout=sigma_readout, teacher_scale=tau,
                                 grid=2500, nodes=200)
    rho, k = kappa / alpha_d, sigma_readout**2 * rate**2 / alpha_d
    eg = 1 + k * tau**2 * rho
    eg2 = 1 + 2 * k * tau**2 * rho + k**2 * tau**4 * rho * (1 + rho)
    m1, m2 = _moments(ds.isel(step=-1), alpha_d)
    assert m1 == pytest.approx(eg, rel=3e-3)
    assert m2 == pytest.approx(eg2 / alpha_d + eg**2, rel=3e-3)
    assert float(ds.mean_squared_singular_value.isel(step=-1)) == pytest.approx(eg, rel=1e-3)


def test_moments_along_training_match_the_density():
    ds = mo.many_outputs_density(0.5, track_every=5, grid=1500, **SETTING)
    m1, _ = _moments(ds, 1.0)
    np.testing.assert_allclose(m1, ds.mean_squared_singular_value.values, rtol=3e-3)
    mass = np.trapezoid(ds.singular_value_density.values, ds.s.values, axis=-1)
    np.testing.assert_allclose(mass, 1.0, atol=1e-2)


# ---------------------------------------------------------------------------------
# against the finite-N population GD
# ---------------------------------------------------------------------------------
def _bin_masses(ds, bins):
    s, rho = ds.s.values, ds.singular_value_density.values
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (rho[1:] + rho[:-1]) * np.diff(s))])
    return np.diff(np.interp(bins, s, cdf))


def _l1_against_seeds(theory, sims, step, bins):
    """L1 between the theory's bin masses and each seed's histogram, and between pairs of seeds
    (the sampling noise the first must not exceed)."""
    hists = [np.histogram(x.singular_values.sel(step=step).values, bins)[0] for x in sims]
    hists = [h / h.sum() for h in hists]
    p = _bin_masses(theory.sel(step=step), bins)
    to_theory = np.array([abs(p - h).sum() for h in hists])
    pairs = np.array([abs(a - b).sum() for i, a in enumerate(hists) for b in hists[i + 1:]])
    return to_theory, pairs


@pytest.fixture(scope="module")
def sims512():
    return [mo.many_outputs_simulation(512, 0.5, seed=k, track_every=[5, 10], **SETTING) for k in range(4)]


def test_density_matches_simulation_n512(sims512):
    theory = mo.many_outputs_density(0.5, track_every=[5, 10], grid=1200, s_max=10.0, **SETTING)
    for step in (5, 10):
        bins = np.linspace(0, 1.02 * float(theory.bulk_edge.sel(step=step)), 31)
        to_theory, pairs = _l1_against_seeds(theory, sims512, step, bins)
        # independent seeds differ by sampling noise; the limit sits among them, closer than
        # they are to each other (for pure noise E|p - h| ~ E|h - h'| / sqrt(2))
        assert to_theory.mean() < pairs.mean(), (step, to_theory, pairs)
        # the top singular value sits at the predicted edge within the seeds' spread + N^(-2/3)
        top = np.array([x.singular_values.sel(step=step).values[0] for x in sims512])
        edge = float(theory.bulk_edge.sel(step=step))
        assert abs(top.mean() - edge) < 4 * top.std(ddof=1) + 3 * edge * 512 ** (-2 / 3), (top, edge)


@pytest.mark.parametrize("mutation", ["no_teacher_drive", "no_readout_init_term", "no_second_order_drive"])
def test_a_dropped_term_is_rejected(sims512, monkeypatch, mutation):
    """Each term of the mode recursion / population law is needed: without it the density is
    farther from every seed than the seeds are from each other."""
    law, recursion = mo.population_law, mo.mode_recursion
    if mutation == "no_teacher_drive":  # e = 0 instead of -T: nothing moves
        monkeypatch.setattr(mo, "population_law", lambda p, u, r, a, s, sr: law(np.ones_like(p), 0 * u, r, a, s, sr))
    elif mutation == "no_readout_init_term":  # drop B(0)^T T u(R)
        monkeypatch.setattr(mo, "population_law", lambda p, u, r, a, s, sr: law(p, 0 * u, r, a, s, sr))
    else:  # drop the r q_t feedback into p (A(0) grows only through B(0))
        monkeypatch.setattr(mo, "mode_recursion", lambda r, c, a, t: (np.ones_like(recursion(r, c, a, t)[0]),
                                                                      recursion(r, c, a, t)[1]))
    mutated = mo.many_outputs_density(0.5, track_every=[10], grid=1200, s_max=10.0, **SETTING)
    bins = np.linspace(0, 1.02 * max(s.singular_values.sel(step=10).values[0] for s in sims512), 31)
    to_theory, pairs = _l1_against_seeds(mutated, sims512, 10, bins)
    assert to_theory.min() > 1.5 * pairs.max(), (mutation, to_theory, pairs)


def test_island_resolved_below_and_merged_above_the_crossover():
    kappa_star = mo.many_outputs_crossover(**SETTING)
    assert 0.1 < kappa_star < 0.25  # the default setting puts it well inside the scanned range
    scan = mo.many_outputs_gap_scan([0.06, 0.3], widths=[512], seeds=[0, 1, 2], **SETTING)
    assert bool(scan.island_resolved.sel(kappa=0.06).all()), scan.island_gap.values
    assert scan.island_resolved.sel(kappa=0.3).mean() < 0.5, scan.island_gap.values
    assert float(scan.island_gap_theory.sel(kappa=0.06)) > 0.1 and float(scan.island_gap_theory.sel(kappa=0.3)) == 0.0
    # the predicted gap against the simulated s_C - s_(C+1) at kappa = 0.06 (C = 31)
    sim_gap = scan.island_gap.sel(kappa=0.06).values.ravel()
    assert abs(sim_gap.mean() - float(scan.island_gap_theory.sel(kappa=0.06))) < 4 * sim_gap.std(ddof=1) + 0.05


@pytest.mark.parametrize("bad, field", [(dict(kappa=0.0), "kappa"), (dict(alpha_d=-1.0), "alpha_d"),
                                        (dict(rate=-0.1), "rate"), (dict(steps=-1), "steps"),
                                        (dict(sigma=0.0), "sigma"), (dict(grid=2), "grid"),
                                        (dict(rate=50.0, steps=400), "rate")])
def test_bad_input_names_the_field(bad, field):
    args = dict(kappa=0.5, alpha_d=1.0, rate=0.1, steps=3) | bad
    with pytest.raises(ValueError, match=field):
        mo.many_outputs_density(**args)


# ---------------------------------------------------------------------------------
# slow: the distance to the limit shrinks with N
# ---------------------------------------------------------------------------------
_MODELS = {  # the limit at step 10 and the population GD it describes, at width n and seed k
    "teacher_driven": (lambda: mo.many_outputs_density(0.5, track_every=[10], grid=4000, s_max=10.0, **SETTING),
                       lambda n, k: mo.many_outputs_simulation(n, 0.5, seed=k, track_every=[10], **SETTING)),
    "isotropic": (lambda: mo.many_outputs_isotropic_density(1.0, gamma0=4.0, track_every=[10], s_max=10.0, grid=4000,
                                                            **ISO),
                  lambda n, k: mo.many_outputs_simulation(n, 1.0, gamma0=4.0, sigma_readout=0.0, teacher="orthogonal",
                                                          seed=k, track_every=[10], **ISO)),
}


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(_MODELS))
def test_l1_shrinks_with_width(model):
    limit, simulate = _MODELS[model]
    theory = limit()
    bins = np.linspace(0, 1.02 * float(theory.bulk_edge.sel(step=10)), 41)
    p = _bin_masses(theory.sel(step=10), bins)
    l1 = {}
    for n in (256, 512, 1024, 2048):
        sv = np.concatenate([simulate(n, k).singular_values.sel(step=10).values for k in range(2)])
        h = np.histogram(sv, bins)[0]
        l1[n] = abs(p - h / h.sum()).sum()
    print(model, "L1 by width:", l1)
    values = [l1[n] for n in sorted(l1)]
    assert all(b < a for a, b in zip(values, values[1:])), l1
    assert values[-1] < 0.5 * values[0], l1


@pytest.mark.slow
def test_crossover_simulation_matches_theory():
    kappas = np.round(np.arange(0.04, 0.32, 0.02), 3)
    scan = mo.many_outputs_gap_scan(kappas, widths=[512, 1024], seeds=[0, 1, 2], **SETTING)
    print({k: v for k, v in scan.attrs.items() if k.startswith("kappa_")})
    for n in (512, 1024):
        assert abs(scan.attrs[f"kappa_simulation_{n}"] - scan.attrs["kappa_theory"]) <= 0.04, scan.attrs


# ---------------------------------------------------------------------------------
# isotropic teacher, zero readout: the exact limit at finite gamma0
# ---------------------------------------------------------------------------------
ISO = dict(alpha_d=0.5, rate=0.15, steps=10)


def test_isotropic_initial_density_is_marchenko_pastur():
    th = mo.many_outputs_isotropic_density(1.0, gamma0=4.0, track_every=[0], sigma=0.8, **ISO)
    s = th.s.values
    expect = 2 * s * rmt.marchenko_pastur_density(s**2, 2.0, 0.8)
    assert np.trapezoid(abs(th.singular_value_density.isel(step=0).values - expect), s) < 2e-3
    assert th.bulk_edge.isel(step=0) == pytest.approx(rmt.singular_value_edge(2.0, 0.8), rel=1e-6)
    # loss per output at t = 0: the teacher alone, tau^2 (D / C) / 2
    assert th.loss.isel(step=0) == pytest.approx(0.5 * 0.5, rel=1e-12)


@pytest.fixture(scope="module")
def iso_sims():
    return [mo.many_outputs_simulation(512, 1.0, gamma0=4.0, sigma_readout=0.0, teacher="orthogonal", seed=k,
                                       track_every=[5, 10], **ISO) for k in range(4)]


@pytest.mark.parametrize("gamma0, accepted", [(4.0, True), (np.inf, False), (2.0, False)])
def test_isotropic_density_matches_simulation_at_gamma0_4(iso_sims, gamma0, accepted):
    """The limit at the simulated gamma0 = 4 sits among the seeds; the limit without the output
    feedback (gamma0 = inf) or with a wrong gamma0 is rejected by the same seed-spread test."""
    th = mo.many_outputs_isotropic_density(1.0, gamma0=gamma0, track_every=[5, 10], s_max=10.0, grid=1500, **ISO)
    for step in (5, 10):
        bins = np.linspace(0, 1.02 * max(x.singular_values.sel(step=step).values[0] for x in iso_sims), 31)
        to_theory, pairs = _l1_against_seeds(th, iso_sims, step, bins)
        if accepted:
            assert to_theory.mean() < pairs.mean(), (step, to_theory, pairs)
            loss = np.array([float(x.loss.sel(step=step)) for x in iso_sims])
            assert abs(loss.mean() - float(th.loss.sel(step=step))) < 4 * loss.std(ddof=1) + 2e-3, loss
        else:
            assert to_theory.min() > 1.5 * pairs.max(), (step, to_theory, pairs)


def test_isotropic_needs_as_many_outputs_as_inputs():
    with pytest.raises(ValueError, match="kappa"):
        mo.many_outputs_isotropic_density(0.25, alpha_d=0.5)



@pytest.mark.parametrize("gamma0", [0.0, -1.0, float("nan"), True])
def test_gamma0_must_be_positive(gamma0):
    with pytest.raises(ValueError, match="gamma0"):
        mo.many_outputs_isotropic_density(1.0, gamma0=gamma0)
    with pytest.raises(ValueError, match="gamma0"):
        mo.many_outputs_simulation(16, 1.0, gamma0=gamma0)
