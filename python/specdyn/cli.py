"""The ``specdyn`` command line (typer + rich).

    specdyn demo                  width consistency, muP vs NTK, with the theory (~2 min)
    specdyn run CONFIG.toml       one training run -> a Zarr store
    specdyn theory CONFIG.toml    its infinite-width limit (exact or Monte Carlo DMFT) -> a store + figure
    specdyn sweep CONFIG.toml     a study or a plain grid, on Dask
    specdyn plot STORE            figures of a stored study (or run)
    specdyn compare STORE         simulation vs the linear DMFT limit, variable by variable
    specdyn info                  versions, BLAS, threads, GPU

A bad config (unknown key, value out of range) prints one line naming the key
and exits with code 2, before any work starts.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ._format import number

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="specdyn: spectral dynamics of wide networks (simulate, predict, compare).")
console = Console()
err_console = Console(stderr=True)


class ConfigError(Exception):
    """A bad user input: printed as one line, exit code 2."""


def _fail(message: str, code: int = 2):
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)

def _print_sweep(sw: dict) -> None:
    """One line of run counts, then one line per diverged or failed run."""
    wall = f", wall {sw['wall_s']:.1f} s" if "wall_s" in sw else ""
    console.print(f"runs: {sw['total']} ({sw['completed']} new, {sw['skipped']} already stored), "
                  f"diverged: {len(sw['diverged'])}, failed: {len(sw['failed'])}{wall}")
    for g in sw["diverged"]:
        console.print(f"  [yellow]diverged[/] {g}")
    for g, msg in sw["failed"].items():
        console.print(f"  [red]failed[/] {g}: {msg.splitlines()[0]}")
    for g, why in sw.get("damaged", {}).items():
        console.print(f"  [yellow]damaged, run again[/] {g}: {why}")


# ---------------------------------------------------------------------------------
# TOML sweep configs
# ---------------------------------------------------------------------------------
@dataclasses.dataclass
class SweepFile:
    study: str | None        # None: a plain grid of simulate()
    base: object             # RunConfig
    grid: dict               # study keyword arguments or RunConfig fields -> lists
    options: dict            # other [study] keys (study keyword arguments)


def read_sweep_file(path) -> SweepFile:
    """Parse and validate a sweep TOML: [study] name (+ options), [run], [grid].

    Raises ValueError naming the bad key.
    """
    from . import studies
    from .config import RunConfig, load_toml
    from .sweeps import expand_grid

    data = load_toml(path)
    allowed = {"study", "run", "grid"}
    for key in data:
        if key not in allowed:
            raise ValueError(f"unknown table or key {key!r} in {str(path)!r}; allowed: [study], [run], [grid]")
    study_t = data.get("study", {})
    if isinstance(study_t, str):
        study_t = {"name": study_t}
    if not isinstance(study_t, dict):
        raise ValueError("study must be a table with a 'name' key")
    name = study_t.get("name")
    run_t = data.get("run", {})
    if not isinstance(run_t, dict):
        raise ValueError("run must be a table of RunConfig fields")
    grid = data.get("grid", {})
    if not isinstance(grid, dict):
        raise ValueError("grid must be a table of lists")
    options = {k: v for k, v in study_t.items() if k != "name"}
    if name is None:
        if options:
            raise ValueError(f"unknown key 'study.{next(iter(options))}': without study.name only [run] and [grid]")
        base = RunConfig.from_dict(run_t, where="run.")
        expand_grid(grid, base)  # validates every grid key and value
        return SweepFile(None, base, grid, {})
    study = studies.get(name)
    known = {f.name for f in dataclasses.fields(RunConfig)}
    for key in run_t:
        if key not in known:
            raise ValueError(f"unknown key 'run.{key}'; allowed keys: {', '.join(sorted(known))}")
    base = RunConfig.from_dict({**study.default_base().to_dict(), **run_t}, where="run.")
    for key, val in list(grid.items()) + list(options.items()):
        if key not in study.grid_keys:
            where = "grid" if key in grid else "study"
            raise ValueError(f"unknown key '{where}.{key}' for study {name!r}; allowed: {', '.join(study.grid_keys)}")
    _check_option_types(study, {**grid, **options})
    # validate grid values against RunConfig where they map to fields
    field_of = {"widths": "width", "seeds": "seed", "scalings": "scaling", "eta0s": "eta0"}
    for key, vals in grid.items():
        if key in field_of:
            for v in (vals if isinstance(vals, list) else [vals]):
                try:
                    base.replace(**{field_of[key]: v})
                except ValueError as exc:
                    raise ValueError(f"grid.{key}: {exc}") from None
                except TypeError as exc:
                    raise ValueError(f"grid.{key}: bad value {v!r} ({exc})") from None
    return SweepFile(name, base, grid, options)


def _check_option_types(study, values: dict) -> None:
    """A study option must have the type of its default (true/false for a flag, a number for a number)."""
    import inspect
    import numbers

    params = inspect.signature(study.run).parameters
    for key, value in values.items():
        default = params[key].default if key in params else None
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"study option {key!r} must be true or false; got {value!r}")
        elif isinstance(default, numbers.Real):
            for v in (value if isinstance(value, list) else [value]):
                if isinstance(v, bool) or not isinstance(v, numbers.Real):
                    raise ValueError(f"study option {key!r} must be a number (or a list of numbers); got {v!r}")


# ---------------------------------------------------------------------------------
# printing
# ---------------------------------------------------------------------------------
def print_headline(summary: dict, title: str | None = None) -> None:
    """The headline numbers of a study summary (printed by its study object), then its run counts."""
    from . import studies

    study = studies.get(summary.get("study"))
    console.rule(title or f"[bold]{study.name}")
    study.headline(summary, console)
    sw = summary.get("sweep")
    if sw:
        _print_sweep(sw)
    statuses = summary.get("statuses")
    if statuses and not sw:
        console.print(f"run statuses: {statuses}")


def _write_summary(summary: dict, out_dir: Path, name: str) -> Path:
    from .studies import to_json

    path = out_dir / f"{name}_summary.json"
    path.write_text(to_json(summary))
    return path


# ---------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------
@app.command()
def demo(out: Path = typer.Option(Path("specdyn_demo"), "--out", "-o", help="output folder (figures, store)"),
         widths: str = typer.Option("512,1024,2048,4096", help="comma-separated widths"),
         seeds: int = typer.Option(1, min=1, max=16, help="seeds per width"),
         steps: int = typer.Option(80, min=1, help="GD steps per run"),
         workers: Optional[int] = typer.Option(None, min=1, help="Dask worker processes (default: cores)"),
         serial: bool = typer.Option(False, help="run in this process, without Dask"),
         fresh: bool = typer.Option(False, help="delete a previous demo store first")):
    """Width consistency, muP vs NTK, with the one-bulk theory: figures + headline (~2 min on 2 cores).

    The solvable model of docs/theory.md, One-bulk model (depth 2, linear, D = 8, P = 16, gamma0 = 8,
    eta0 = 0.02); NTK runs use the gamma0 that makes NTK equal muP at the
    smallest width, so the scalings differ only in how they change with N.
    """
    from . import studies

    try:
        ws = [int(w) for w in widths.split(",") if w.strip()]
    except ValueError:
        _fail(f"--widths must be comma-separated integers; got {widths!r}")
    if not ws or min(ws) < 8:
        _fail(f"--widths must list widths >= 8; got {widths!r}")
    out.mkdir(parents=True, exist_ok=True)
    store = out / "demo.zarr"
    if fresh and store.exists():
        import shutil

        shutil.rmtree(store)
    base = studies.get("width_consistency").default_base().replace(steps=steps, bulk_steps=[steps],
                                                              track_every=max(1, steps // 20))
    console.print(f"[bold]specdyn demo[/]: width consistency of the hidden-layer outlier, muP vs NTK, "
                  f"widths {ws}, {seeds} seed(s), {steps} steps -> {out}/")
    t0 = time.perf_counter()
    if serial:
        console.print("running serially in this process (--serial)")
        client, close_client = "serial", (lambda: None)
    else:
        from .sweeps import _open_client

        try:  # the cluster alone: a failure here is the environment, not the study
            client, close_client = _open_client(None, workers, len(ws) * 2 * seeds)
        except (OSError, RuntimeError, TimeoutError) as exc:
            _fail(f"the Dask cluster could not start ({type(exc).__name__}: {exc}); "
                  f"rerun with --serial to run in this process", code=1)
    try:
        ds, summary = studies.width_consistency(widths=ws, scalings=("mup", "ntk"), seeds=tuple(range(seeds)),
                                                base=base, theory=True, store=store, client=client,
                                                workers=workers, progress=True)
    except ValueError as exc:
        _fail(str(exc))
    finally:
        close_client()
    figures = studies.get("width_consistency").figures(ds, summary, out)
    summary["wall_s"] = time.perf_counter() - t0
    spath = _write_summary(summary, out, "demo")
    print_headline(summary, "[bold]demo: width consistency (muP vs NTK)")
    console.print(f"figures: {', '.join(figures)}")
    console.print(f"store: {store}   summary: {spath}   total wall time: {summary['wall_s']:.1f} s")


@app.command()
def run(config: Path = typer.Argument(..., help="TOML file with a [run] table of RunConfig fields"),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Zarr store (default: CONFIG.zarr)"),
        progress: bool = typer.Option(True, help="show a progress bar")):
    """Train one network as configured and store the result (one Zarr group)."""
    from .config import RunConfig, load_toml

    try:
        data = load_toml(config)
        if "run" in data and set(data) - {"run", "study", "grid"}:
            raise ValueError(f"unknown table {sorted(set(data) - {'run', 'study', 'grid'})[0]!r}")
        cfg = RunConfig.from_dict(data.get("run", data), where="run." if "run" in data else "")
    except ValueError as exc:
        _fail(str(exc))
    from . import storage
    from .training import simulate

    store = out or config.with_suffix(".zarr")
    try:
        storage.check_save_target(store)  # before training: a store we may not replace, an unwritable path
    except ValueError as exc:
        _fail(str(exc))
    t0 = time.perf_counter()
    try:
        ds = simulate(cfg, progress=progress or None)
    except ValueError as exc:  # a limit of this config found only when the run is set up
        _fail(str(exc))
    try:
        storage.save(ds, store)
    except (ValueError, OSError) as exc:
        _fail(f"could not store the run in {str(store)!r}: {exc}")
    _print_run(ds, time.perf_counter() - t0)
    console.print(f"stored in {store}")


@app.command()
def theory(config: Path = typer.Argument(..., help="TOML file with a [run] table of RunConfig fields"),
           out: Optional[Path] = typer.Option(None, "--out", "-o", help="Zarr store (default: CONFIG_theory.zarr)"),
           particles: int = typer.Option(1 << 14, min=2, help="Monte Carlo sites per replica (nonlinear nets)"),
           replicas: int = typer.Option(4, min=1, help="Monte Carlo replicas (nonlinear nets)")):
    """The infinite-width limit of a configured run: exact DMFT for linear networks
    (one_bulk at depth 2, deep_linear deeper), Monte Carlo DMFT for nonlinear muP ones."""
    from .config import RunConfig, load_toml

    try:
        data = load_toml(config)
        cfg = RunConfig.from_dict(data.get("run", data), where="run." if "run" in data else "")
    except ValueError as exc:
        _fail(str(exc))
    from . import plots, storage
    from . import theory as th

    t0 = time.perf_counter()
    try:
        limits = cfg.limits()
        if "one_bulk" in limits:
            ds = th.one_bulk(cfg)
        elif "deep_linear" in limits:
            ds = th.deep_linear(cfg)
        else:  # raises, naming what the Monte Carlo DMFT covers, when it does not cover cfg either
            ds = th.deep_monte_carlo(cfg, particles=particles, replicas=replicas)
    except ValueError as exc:
        _fail(f"no limit for this config: {exc}")
    store = out or config.with_name(config.stem + "_theory.zarr")
    storage.save(ds, store)
    ds.attrs["width"] = "inf"  # for the table title (the store keeps the config)
    if "singular_values" in ds:
        _print_run(ds, time.perf_counter() - t0)
    else:
        console.print(f"{ds.attrs['model']}: loss {number(float(ds.loss.values[0]))} -> {number(float(ds.loss.values[-1]))} "
                      f"(+- {number(float(ds.loss_stderr.values[-1]), 2)}), S -> "
                      f"{number(float(ds.normalized_sharpness.values[-1]))}; {time.perf_counter() - t0:.1f} s")
    figure = plots.run_overview(ds, Path(store).with_suffix(".png"))
    console.print(f"stored in {store}; figure {figure}")


def _print_run(ds, wall: float) -> None:
    import numpy as np

    t = Table(title=f"run: {ds.attrs.get('scaling')} N={ds.attrs.get('width')} seed={ds.attrs.get('seed')} "
                    f"status={ds.attrs.get('status')}")
    t.add_column("quantity")
    t.add_column("step 0", justify="right")
    t.add_column(f"step {int(ds.step.values[-1])}", justify="right")
    t.add_row("loss", number(float(ds.loss.values[0])), number(float(ds.loss.values[-1])))
    if "normalized_sharpness" in ds:
        t.add_row("normalized sharpness S", number(float(ds.normalized_sharpness.values[0])),
                  number(float(ds.normalized_sharpness.values[-1])))
    for layer in ds.layer.values:
        sv = ds.singular_values.sel(layer=layer)
        a, b = sv.values[0], sv.values[-1]
        t.add_row(f"top singular values {layer}", " ".join(number(float(x), 3) for x in a[np.isfinite(a)]),
                  " ".join(number(float(x), 3) for x in b[np.isfinite(b)]))
    console.print(t)
    console.print(f"wall time {wall:.1f} s")


@app.command()
def sweep(config: Path = typer.Argument(..., help="TOML with [study] name, [run] base fields and [grid] lists"),
          out: Optional[Path] = typer.Option(None, "--out", "-o", help="Zarr store (default: CONFIG.zarr)"),
          scheduler: Optional[str] = typer.Option(None, help="Dask scheduler address (tcp://host:8786), "
                                                             "or 'serial'"),
          workers: Optional[int] = typer.Option(None, min=1, help="worker processes of the local cluster"),
          figures: bool = typer.Option(True, help="write the study's figures next to the store")):
    """Run a study (or a plain grid of runs) on Dask; resumes in an existing store."""
    from . import studies
    from .sweeps import sweep as run_sweep

    try:
        spec = read_sweep_file(config)
    except ValueError as exc:
        _fail(str(exc))
    store = out or config.with_suffix(".zarr")
    if spec.study is None:
        try:
            summary = run_sweep(studies.simulate_run, spec.grid, store, client=scheduler, workers=workers,
                                progress=True, base=spec.base)
        except ValueError as exc:
            _fail(str(exc))
        _print_sweep(summary)
        return
    study = studies.get(spec.study)
    try:
        ds, summary = study.run(**spec.grid, **spec.options, base=spec.base, store=store, client=scheduler,
                                workers=workers, progress=True)
    except ValueError as exc:
        _fail(str(exc))
    print_headline(summary)
    out_dir = Path(str(store)).parent
    _write_summary(summary, out_dir, spec.study)
    if figures:
        paths = study.figures(ds, summary, out_dir)
        console.print(f"figures: {', '.join(paths)}")


@app.command()
def plot(store: Path = typer.Argument(..., help="a Zarr store written by sweep, demo or run"),
         out: Optional[Path] = typer.Option(None, "--out", "-o", help="folder for the PNGs (default: next to it)")):
    """Draw the figures of a stored study (or the overview of a single run)."""
    from . import plots, storage, studies

    if not Path(store).exists():
        _fail(f"store {str(store)!r} does not exist")
    out_dir = out or Path(store).parent
    try:  # a file, an empty folder, garbled metadata or a damaged run: one line naming it
        meta = storage.read_attrs(store).get("specdyn_sweep", {})
        if meta.get("study") in studies.STUDIES:
            ds, summary = studies.analyze(store)
        else:
            groups = storage.completed_groups(store)
            if not groups:
                _fail(f"store {str(store)!r} holds no complete run")
            runs = {g: storage.load(store, g or None) for g in groups}
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    if meta.get("study") in studies.STUDIES:
        paths = studies.get(meta["study"]).figures(ds, summary, out_dir)
        print_headline(summary)
    else:
        paths = []
        for g, ds in runs.items():
            name = (g or Path(store).stem).replace("/", "_")
            paths.append(plots.run_overview(ds, out_dir / f"{name}.png"))
    console.print(f"figures: {', '.join(paths)}")


@app.command()
def compare(store: Path = typer.Argument(..., help="a study store holding muP runs of a linear network (depth >= 2) and its DMFT limit")):
    """Simulation vs the linear DMFT limit (one-bulk or deep linear), per run: gaps of loss, s_k, S, beta_f."""
    from . import storage, studies
    from .comparison import compare as compare_fn
    from .config import RunConfig

    if not Path(store).exists():
        _fail(f"store {str(store)!r} does not exist")
    theory = None
    if storage.is_complete(store, studies.THEORY_GROUP):
        theory = storage.load(store, studies.THEORY_GROUP)
    runs = [g for g in storage.completed_groups(store) if g.startswith("runs/") or g == ""]
    if not runs:
        _fail(f"store {str(store)!r} holds no complete run")
    t = Table(title=f"simulation vs the linear DMFT (muP limit) in {store}")
    for col in ("run", "loss max|gap|", "s1 max|gap|", "S max|gap|", "beta_f max|gap|", "outliers missing (sim/theory)"):
        t.add_column(col, justify="right" if col != "run" else "left")
    shown = 0
    for g in runs:
        sim = storage.load(store, g or None)
        cfg = RunConfig.from_json(sim.attrs["config"])
        if cfg.scaling != "mup":
            continue
        th = theory
        if th is None or not studies.same_limit(RunConfig.from_json(th.attrs["source_config"]), cfg):
            th, note = studies.limit_theory(cfg)
            if th is None:
                console.print(f"{g}: {note}")
                continue
        cmp = compare_fn(sim.sel(layer=[str(v) for v in th.layer.values]), th)
        s = cmp.attrs["summary"]

        def gap(v):
            return number(s[v]["max_abs_gap"], 3) if v in s else "-"

        miss = s.get("singular_values", {})
        t.add_row(g.removeprefix("runs/") or str(store), gap("loss"), gap("singular_values"),
                  gap("normalized_sharpness"), gap("beta_f"),
                  f"{miss.get('missing_sim', '-')}/{miss.get('missing_theory', '-')}")
        shown += 1
    if shown == 0:
        _fail("no muP run of a linear network with a DMFT limit (depth >= 2, linear, C = 1) in this store")
    console.print(t)


@app.command()
def verify(store: Path = typer.Argument(..., help="a Zarr store written by specdyn (run, sweep, demo or a monitor)")):
    """Check every complete run of a store against its checksums; exit 1 when one is damaged."""
    from . import storage

    if not store.is_dir():
        _fail(f"store {str(store)!r} does not exist or is not a folder")
    if not (store / "zarr.json").is_file():
        _fail(f"{str(store)!r} is not a Zarr store (no zarr.json at its root)")
    try:
        damaged = storage.verify(store)
        groups = storage.completed_groups(store) if not damaged else []
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    for group, reason in damaged:
        console.print(f"damaged: {group or '(root)'}: {reason}", highlight=False, soft_wrap=True)
    if damaged:
        raise typer.Exit(1)
    console.print(f"{len(groups)} complete run(s), every chunk and checksum intact")


@app.command()
def info():
    """Versions, the BLAS in use, thread counts and whether the GPU module is usable."""
    import specdyn

    t = Table(title="specdyn info", show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value")
    for k, v in specdyn.info().items():
        t.add_row(str(k), str(v))
    for mod in ("xarray", "zarr", "dask", "distributed", "matplotlib"):
        try:
            t.add_row(mod, __import__(mod).__version__)
        except Exception as exc:
            t.add_row(mod, f"unavailable ({exc})")
    console.print(t)


def main():
    """Entry point of the ``specdyn`` script."""
    app()


if __name__ == "__main__":
    sys.exit(main())
