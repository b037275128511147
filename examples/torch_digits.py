"""Spectral width check on real data: a 3-hidden-layer tanh MLP on the digits, muP vs SP.

Trains specdyn's own network (``specdyn.torch.mlp``) with plain PyTorch SGD on
scikit-learn's handwritten digits at several widths, under muP and under SP,
with a SpectralMonitor on every run, and writes the width-sweep figure and a
JSON summary: per scaling, the spread of s1(t) of the first square hidden
layer W1 across widths.

    python examples/torch_digits.py                 # widths 256 .. 2048
    python examples/torch_digits.py --quick         # a smoke run (small widths, few steps)

The normalized matrix of each layer is the one that multiplies its input:
W / sqrt(fan_in) under muP (monitor normalize="fan_in"), W itself under SP
(normalize="none"); both start with the bulk edge 2 for square layers.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import specdyn
from specdyn.torch import mlp, specdyn_loss, width_sweep, width_sweep_figure

HERE = Path(__file__).resolve().parent


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--steps", type=int, default=150, help="SGD steps per run")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--every", type=int, default=10, help="observe every that many steps")
    parser.add_argument("--eta0", type=float, default=0.5, help="muP learning rate eta0 (raw rate eta0 * N)")
    parser.add_argument("--eta0-sp", type=float, default=0.02,
                        help="SP learning rate (raw, the same at every width; SP at the muP eta0 diverges)")
    parser.add_argument("--out", type=Path, default=HERE / "torch_digits")
    parser.add_argument("--quick", action="store_true", help="widths 64, 128, 256 and 30 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.widths, args.steps = [64, 128, 256], 30
    torch.set_num_threads(max(1, torch.get_num_threads()))
    d = specdyn.data.digits(seed=0, targets="centered", dtype="float32")
    X, Y = torch.from_numpy(d.X_train), torch.from_numpy(d.Y_train)
    Xt = torch.from_numpy(d.X_test)

    def config(scaling, width):
        eta0 = args.eta0 if scaling == "mup" else args.eta0_sp
        return specdyn.RunConfig(width=width, depth=3, input_dim=64, output_dim=10, samples=X.shape[0],
                                 activation="tanh", scaling=scaling, eta0=eta0, dtype="float32",
                                 track_sharpness=False, seed=1)

    accuracy = {}

    def train_for(scaling):
        def train(model, monitor):
            gen = torch.Generator().manual_seed(0)  # the same batches at every width
            opt = torch.optim.SGD(model.parameters(), lr=model.learning_rate)
            last = {"loss": float("nan")}
            monitor.attach(opt, every=args.every, loss=lambda: last["loss"])
            for _ in range(args.steps):
                idx = torch.randint(0, X.shape[0], (args.batch,), generator=gen)
                loss = specdyn_loss(model(X[idx]), Y[idx])
                opt.zero_grad()
                loss.backward()
                last["loss"] = loss.item()
                opt.step()
            with torch.no_grad():
                pred = model(Xt).argmax(1).numpy()
            accuracy.setdefault(scaling, {})[model.layers.W1.weight.shape[0]] = float(
                np.mean(pred == d.labels_test))
        return train

    sweeps, timings = {}, {}
    for scaling, label, normalize in (("mup", "muP", "fan_in"), ("sp", "SP", "none")):
        t0 = time.perf_counter()
        ds, summary = width_sweep(lambda n: mlp(config(scaling, n), (d.X_train, d.Y_train)), args.widths,
                                  train_for(scaling), top_k=4,
                                  monitor_kwargs={"normalize": normalize})
        timings[scaling] = time.perf_counter() - t0
        sweeps[label] = (ds, summary)
    args.out.mkdir(parents=True, exist_ok=True)
    figure = width_sweep_figure(sweeps, args.out / "digits_width_sweep.png", layer="layers.W1.weight")
    result = {"widths": args.widths, "steps": args.steps, "batch": args.batch, "eta0": {"mup": args.eta0, "sp": args.eta0_sp},
              "layer": "layers.W1.weight",
              "spread": {label: s["layers"]["layers.W1.weight"]["spread"] for label, (_, s) in sweeps.items()},
              "spread_by_layer": {label: {k: v["spread"] for k, v in s["layers"].items()}
                                  for label, (_, s) in sweeps.items()},
              "delta_spread": {label: s["layers"]["layers.W1.weight"]["delta_spread"]
                               for label, (_, s) in sweeps.items()},
              "decay_exponent": {label: s["layers"]["layers.W1.weight"]["decay_exponent"]
                                 for label, (_, s) in sweeps.items()},
              "final_s1": {label: s["layers"]["layers.W1.weight"]["final_s1"] for label, (_, s) in sweeps.items()},
              "diverged_widths": {label: s["diverged_widths"] for label, (_, s) in sweeps.items()},
              "test_accuracy": accuracy, "status": {label: ds.attrs["status"] for label, (ds, _) in sweeps.items()},
              "wall_s": timings, "figure": str(figure)}
    (args.out / "digits_width_sweep.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("spread", "delta_spread", "decay_exponent", "diverged_widths", "test_accuracy",
                                                          "status", "wall_s")}, indent=2))
    return result


if __name__ == "__main__":
    main()
