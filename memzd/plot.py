"""A picture of a lineage: the loss curve of a checkpoint's batch, forgetting, and recall.

Three panels, from what memz.db already records: the batch's finetune_loss
per step (with the during-training forgetting_loss samples), the served and
adapter-alone anchor_ce_delta per checkpoint across the lineage, and recall
per checkpoint. matplotlib (the optional `memz[plot]` extra) draws it to PNG.
"""

from __future__ import annotations

from pathlib import Path

from .errors import MemzError


def plot(store, checkpoint: str, out: Path) -> Path:
    """Draw `checkpoint`'s lineage to `out` (PNG, or SVG or PDF by its suffix; none: .png);
    returns the path."""
    if not out.suffix:
        out = out.with_suffix(".png")
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise MemzError(f"{out}: memzctl plot writes .png, .svg or .pdf, not {out.suffix}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MemzError("memzctl plot needs matplotlib: pip install 'memz[plot]'") from exc
    row = store.checkpoint(checkpoint)
    if row is None:
        raise MemzError(f"no checkpoint '{checkpoint}'; see memzctl checkpoints")
    lineage = list(reversed(store.lineage(checkpoint)))  # oldest first
    ids = [c.id.rsplit("_", 1)[-1] for c in lineage]  # the sequence number is what changes
    loss = store.curve(row.batch_id, "finetune_loss") if row.batch_id else []
    forgetting = store.curve(row.batch_id, "forgetting_loss") if row.batch_id else []
    forgetting_steps = [s for s, in store.db.execute(
        "SELECT step FROM metrics WHERE batch_id = ? AND name = 'forgetting_loss' ORDER BY step, id",
        [row.batch_id])] if row.batch_id else []

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2))
    fig.suptitle(f"memz lineage of {checkpoint} ({len(lineage)} checkpoint(s), base {row.base_model})", fontsize=11)
    a.plot(range(1, len(loss) + 1), loss, marker=".", label="finetune_loss")
    if forgetting:
        a.plot(forgetting_steps, forgetting, marker="o", label="forgetting_loss (anchors, adapter)")
    a.set(title=f"batch {row.batch_id}: loss per step", xlabel="step", ylabel="cross-entropy")
    a.xaxis.get_major_locator().set_params(integer=True)
    a.legend(fontsize=8)
    a.grid(alpha=0.3)

    def series(key):
        return [c.metrics.get(key) if c.metrics.get(key) is not None else float("nan") for c in lineage]

    b.plot(ids, series("anchor_ce_delta"), marker="o", label="served (through the gate)")
    b.plot(ids, series("adapter_anchor_ce_delta"), marker="s", label="adapter alone")
    b.axhline(0, color="grey", lw=0.8)
    b.set(title="forgetting: anchor_ce_delta", xlabel="checkpoint", ylabel="CE minus the base model's")
    b.legend(fontsize=8)
    b.grid(alpha=0.3)

    bars = c.bar(ids, series("recall"), color=["tab:red" if x.status == "rolled_back" else "tab:green"
                                              for x in lineage])
    c.bar_label(bars, fmt="%.2f", fontsize=8)
    c.set(title="recall of each batch (red: rolled back)", xlabel="checkpoint", ylabel="share answered", ylim=(0, 1.05))
    c.grid(alpha=0.3, axis="y")
    for axis in (b, c):
        axis.tick_params(axis="x", labelrotation=45 if len(ids) > 8 else 0)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
