"""The one schema of result Datasets: ``simulate``, every theory and the PyTorch monitor build theirs here.

A variable has the same attributes wherever it appears: ``long_name`` (what it is) and
``units`` (in the field's words: GD steps, units of the normalized matrix, ...). What a
particular model means beyond that (a theory reports only outliers above the bulk edge, the
proportional model's loss is a population loss) goes in the variable's ``description``.
:func:`dataset` refuses a variable the schema does not know, so a new name is added here once.
"""
from __future__ import annotations

_NORMALIZED = "units of the normalized matrix W / sqrt(fan_in)"
_LOSS = "squared output units (MSE / 2)"

# One line a variable: name :: long_name :: units (- for none; {normalized} and {loss}: the two units above).
_TABLE = """
step                           :: training step t :: GD steps
step_b                         :: second training step t' of a two-time quantity :: GD steps
layer                          :: weight matrix W_l (or hidden layer h_l) :: -
hidden                         :: hidden layer h_l :: -
rank                           :: index k of the k-th largest singular value :: -
input                          :: input coordinate :: -
output_unit                    :: output unit a of the C outputs :: -
sample                         :: training sample mu :: -
sample2                        :: training sample nu :: -
replica                        :: independent Monte Carlo replica :: -
width                          :: network width N :: neurons
bulk_step                      :: training step of a bulk histogram :: GD steps
bin                            :: histogram bin :: -
bin_edge                       :: histogram bin edge :: -
loss                           :: training loss, the mean over samples of (f - y)^2 / 2 :: {loss}
loss_replicas                  :: training loss of each Monte Carlo replica :: {loss}
output                         :: network output f(x_mu) :: output units
beta_f                         :: linear map of the network, f(x) = beta_f . x / sqrt(D) :: output units
learning_rate                  :: raw learning rate eta of the optimizer :: squared weight per loss
normalized_sharpness           :: eta lambda_max(NTK) / P (edge of stability at 2) :: dimensionless
hessian_top                    :: largest eigenvalue of the loss Hessian :: loss per squared weight
hessian_top_residual           :: Lanczos residual of hessian_top :: loss per squared weight
hessian_block_top              :: largest eigenvalue of the layer's diagonal Hessian block :: loss per squared weight
hessian_block_residual         :: Lanczos residual of hessian_block_top :: loss per squared weight
ntk_top                        :: largest eigenvalue of the NTK Gram matrix :: squared output units per squared weight
ntk_top_residual               :: Lanczos residual of ntk_top :: squared output units per squared weight
sharpness_certified            :: whether hessian_top and ntk_top met their tolerance :: true/false
singular_values                :: top singular values s_k of the normalized weight matrix :: {normalized}
singular_values_residual       :: Lanczos residual of s_k :: {normalized}
delta_singular_values          :: top singular values of the normalized change W(t) - W(0) :: {normalized}
delta_singular_values_residual :: Lanczos residual of the singular values of W(t) - W(0) :: {normalized}
naive_singular_values          :: BGN outliers of an independent spike with the increment's spectrum :: {normalized}
top_singular_value             :: largest singular value of the normalized matrix (outlier or bulk edge) :: {normalized}
certified                      :: whether every tracked s_k of the layer met its tolerance :: true/false
tolerance                      :: Lanczos residual tolerance of the layer's s_k :: relative to the largest s_k
weight_norm                    :: Frobenius norm of the normalized weight matrix :: {normalized}
overlap_input                  :: overlap^2 of right singular vector k with the mean input :: dimensionless
overlap_backward               :: overlap^2 of left singular vector k with the mean backward signal :: dimensionless
overlap_previous               :: overlap^2 of right singular vector k with the previous one :: dimensionless
overlap_spike_left             :: |<left outlier vector, top left singular vector of W(t) - W(0)>|^2 :: dimensionless
overlap_spike_right            :: |<right outlier vector, top right singular vector of W(t) - W(0)>|^2 :: dimensionless
bulk_counts                    :: histogram of all singular values of the normalized matrix :: singular values per bin
bulk_edges                     :: bin edges of bulk_counts :: {normalized}
fan_in                         :: columns of the weight matrix :: inputs
initial_scale                  :: initial scale sigma, sigma^2 = ||W(0)||_F^2 / (fan_in rows) :: dimensionless
bulk_edge_law                  :: edge of the initial bulk law of the singular values :: {normalized}
history_rank                   :: rank of the compressed history used by the outlier solver :: directions
C_w                            :: |w(t)|^2 / N :: squared weight
C_q                            :: |q(t)|^2 / N, q = W0 r / sqrt(D) :: squared weight
C_w_two_time                   :: w(t) . w(t') / N :: squared weight
C_q_two_time                   :: q(t) . q(t') / N :: squared weight
feature_kernel                 :: feature kernel Phi^l = <phi(h^l_mu) phi(h^l_nu)> :: squared activation
feature_kernel_trace           :: tr Phi^l(t, t) / D, Phi^l = H^l(t)^T H^l(t) / N :: squared activation
gradient_kernel                :: gradient kernel G^l = <g^l g^l> of the O(1) backward field :: squared backward field
slope                          :: b of the fit v(N) = v_inf + b / sqrt(N) :: {normalized} x sqrt(neurons)
seed_mean                      :: seed mean of s_k at each width :: {normalized}
seed_stderr                    :: standard error of the seed mean of s_k :: {normalized}
seed                           :: random seed of a simulation :: -
s                              :: singular value s of the normalized matrix :: {normalized}
index                          :: position in the descending list of all singular values :: -
kappa                          :: outputs per width, C / N :: dimensionless
singular_value_density         :: density of the nonzero singular values of the normalized matrix :: per unit of s
bulk_edge                      :: top edge of the support of the singular values :: {normalized}
island_gap_lower               :: top of the bulk below the teacher-driven island (NaN: no gap) :: {normalized}
island_gap_upper               :: bottom of the teacher-driven island (NaN: no gap) :: {normalized}
island_isolated                :: whether the teacher-driven island is separated from the bulk :: true/false
mean_squared_singular_value    :: (1/N) tr A A^T of the normalized matrix A :: squared {normalized}
island_gap                     :: gap s_C - s_(C+1) between C driven singular values and the rest :: {normalized}
island_spacing                 :: mean neighbouring spacing around s_C :: {normalized}
island_resolved                :: whether island_gap exceeds a multiple of island_spacing :: true/false
island_gap_theory              :: width of the gap between bulk and island in the limit (0: merged) :: {normalized}
"""
VARIABLES = {name: (long_name, "" if units == "-" else units.format(normalized=_NORMALIZED, loss=_LOSS))
             for name, long_name, units in (tuple(part.strip() for part in line.split(" :: "))
                                            for line in _TABLE.strip().splitlines())}
STDERR = "_stderr"  # name + STDERR: the standard error of name (over replicas or seeds), in its units


def variable_attrs(name: str) -> dict:
    """``{"long_name", "units"}`` of a variable of the schema (ValueError for an unknown name)."""
    base = name[: -len(STDERR)] if name.endswith(STDERR) and name[: -len(STDERR)] in VARIABLES else None
    if base is not None:
        long_name, units = VARIABLES[base]
        return {"long_name": f"standard error of: {long_name}", "units": units}
    if name not in VARIABLES:
        raise ValueError(f"{name!r} is not a variable of the result schema (specdyn.results.VARIABLES); "
                         "add it there once, with its long name and units")
    long_name, units = VARIABLES[name]
    return {"long_name": long_name, "units": units}


def run_attrs(config, kind: str, diverged_step: int = -1, **extra) -> dict:
    """The attributes every stored result carries: ``config`` (JSON), ``kind``, ``status`` ("ok" or
    "diverged", from ``diverged_step``), ``diverged_step``, ``scaling``, ``width``, ``seed``; then ``extra``."""
    attrs = {"config": config.to_json(), "kind": kind, "status": "ok" if diverged_step < 0 else "diverged",
             "diverged_step": int(diverged_step), "scaling": config.scaling, "width": config.width,
             "seed": config.seed}
    attrs.update(extra)
    return attrs


def dataset(variables: dict, coords: dict, attrs: dict, descriptions: dict | None = None):
    """An ``xarray.Dataset`` of the schema: ``variables`` ``{name: (dims, values)}``, ``coords`` ``{name:
    values or (dims, values)}``, dataset ``attrs``; every variable and coordinate gets its ``long_name`` and
    ``units``, and ``descriptions`` ``{name: text}`` what this model means by it."""
    import xarray as xr

    ds = attach(xr.Dataset(variables, coords=coords, attrs=attrs))
    for name, text in (descriptions or {}).items():
        if name not in ds.variables:
            raise ValueError(f"a description of {name!r}, which the dataset does not hold")
        ds.variables[name].attrs["description"] = text
    return ds


def attach(ds):
    """``ds`` with the schema's attributes on every variable it holds (for a Dataset built elsewhere)."""
    for name, var in ds.variables.items():
        var.attrs.update(variable_attrs(str(name)))
    return ds


__all__ = ["VARIABLES", "variable_attrs", "run_attrs", "dataset", "attach"]
