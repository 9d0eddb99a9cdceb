"""What a person sees of a fit besides its per-epoch lines: the training curves."""

from __future__ import annotations

import io


def training_curves_png(history: list[dict], metric: str) -> bytes:
    """Loss and the validation metric per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] + 1 for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(epochs, [h["loss"] for h in history], marker="o")
    a.set(title="training loss", xlabel="epoch")
    b.plot(epochs, [h[metric] for h in history], marker="o", color="tab:green")
    b.set(title=metric, xlabel="epoch")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
