"""Callbacks of the training runs: sample-order log, per-rank weights, loss/CER plot."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import lightning as L

log = logging.getLogger(__name__)


class SampleLog(L.Callback):
    """Append the sample ids of every micro-batch to ``<dir>/samples.rank<R>.jsonl``.

    One line per micro-batch: the optimizer step it fed, the rank and the ids. An audit trail of
    what each rank trained on (the resume and DDP tests check it: no sample twice, none skipped).
    A resumed run appends; the steps it re-does after the checkpoint appear twice, the later lines
    being the ones that count.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        ids = getattr(pl_module, "last_batch_ids", None)
        if ids is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"samples.rank{trainer.global_rank}.jsonl"
        record = {"step": pl_module.last_batch_step, "rank": trainer.global_rank, "ids": list(ids)}
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")


class RankWeights(L.Callback):
    """Save every rank's final encoder (stage 1) or trainable (stage 2) parameters (safetensors):
    the DDP tests compare them.

    Parameters only: BatchNorm running statistics are per-rank between DDP's buffer broadcasts
    (from rank 0, at every forward), and checkpoints hold rank 0's.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def on_train_end(self, trainer, pl_module) -> None:
        from safetensors.torch import save_file

        self.directory.mkdir(parents=True, exist_ok=True)
        if hasattr(pl_module, "encoder"):  # stage 1: the encoder
            state = {k: v.detach().cpu().contiguous() for k, v in pl_module.encoder.named_parameters()}
            name = "encoder_params"
        else:  # stage 2: what trains (LoRA, projector, auxiliary heads)
            state = {
                k: v.detach().cpu().contiguous() for k, v in pl_module.named_parameters() if v.requires_grad
            }
            name = "trainable_params"
        save_file(state, str(self.directory / f"{name}.rank{trainer.global_rank}.safetensors"))


def read_metrics_csv(path: str | Path) -> list[dict[str, float]]:
    """Rows of a Lightning ``metrics.csv`` with empty cells dropped and numbers parsed."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            parsed = {}
            for key, value in row.items():
                if value not in ("", None):
                    try:
                        parsed[key] = float(value)
                    except ValueError:
                        pass
            rows.append(parsed)
    return rows


def merge_metrics(csv_paths: list[Path], out_csv: str | Path) -> Path | None:
    """Concatenate the CSV logs of successive launches (resumes) into one file.

    A resumed run re-does the steps after its checkpoint, so rows of a later launch replace the
    rows of earlier ones from the first step it logged on.
    """
    merged: list[dict[str, float]] = []
    for path in csv_paths:
        rows = read_metrics_csv(path)
        if rows:
            first = min(r.get("step", 0) for r in rows)
            merged = [r for r in merged if r.get("step", 0) < first] + rows
    if not merged:
        return None
    keys = sorted({k for r in merged for k in r}, key=lambda k: (k != "step", k))
    out_csv = Path(out_csv)
    with open(out_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(merged)
    return out_csv


def plot_curves(metrics_csv: str | Path, out_png: str | Path, title: str = "") -> Path | None:
    """Plot training loss and validation CER/WER against the step into ``out_png``.

    Returns the PNG path, or None when the CSV holds no loss values yet.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics_csv(metrics_csv)
    loss = [
        (r["step"], r["train/loss"]) for r in rows if "train/loss" in r and math.isfinite(r["train/loss"])
    ]
    if not loss:
        return None
    cer = [(r["step"], 100 * r["val/cer"]) for r in rows if "val/cer" in r]
    wer = [(r["step"], 100 * r["val/wer"]) for r in rows if "val/wer" in r]

    fig, ax_loss = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax_loss.plot(*zip(*loss), color="tab:blue", linewidth=0.8, label="train loss")
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("CTC loss", color="tab:blue")
    ax_loss.set_yscale("log")
    if cer or wer:
        ax_err = ax_loss.twinx()
        if cer:
            ax_err.plot(*zip(*cer), "o-", color="tab:red", label="val CER %")
        if wer:
            ax_err.plot(*zip(*wer), "s--", color="tab:orange", label="val WER %", alpha=0.7)
        ax_err.set_ylabel("error rate (%)", color="tab:red")
        ax_err.set_ylim(bottom=0)
        ax_err.legend(loc="upper right")
        if cer:
            step, last = cer[-1]
            ax_err.annotate(f"CER {last:.1f}%", (step, last), textcoords="offset points", xytext=(-60, 10))
    ax_loss.grid(alpha=0.3)
    ax_loss.set_title(title or "training curves")
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
