"""The report's plots, each a PNG (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

import io

import numpy as np

from qtf_edge.evaluate import visible_text


def new_figure(width: float, height: float):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), dpi=100)


def figure_png(figure) -> bytes:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def latency_bars(breakdown: dict, title: str) -> bytes:
    """ms per decode step by model part, largest first."""
    parts = list(breakdown["parts"].items())
    figure = new_figure(7, 0.45 * len(parts) + 1.2)
    axes = figure.add_subplot(1, 1, 1)
    names = [name for name, _ in parts][::-1]
    values = [row["ms_per_step"] for _, row in parts][::-1]
    axes.barh(names, values, color="C0")
    for y, (value, (_, row)) in enumerate(zip(values, parts[::-1])):
        axes.annotate(f"{value:.3f} ms ({row['share']:.0%})", (value, y), fontsize=8,
                      xytext=(3, -3), textcoords="offset points")
    axes.set_xlabel("ms per decode step (measured)")
    axes.set_xlim(0, max(values) * 1.35 if values and max(values) > 0 else 1)
    axes.set_title(title, fontsize=9)
    return figure_png(figure)


def routing_heatmap(trace: list[dict], title: str) -> bytes:
    """Entanglement entropy per block (rows) and token (columns); tokens routed to
    quantum-kernel attention are boxed."""
    n_blocks = len(trace[0]["blocks"])
    entropy = np.array([[t["blocks"][b]["entropy"] for t in trace] for b in range(n_blocks)])
    figure = new_figure(max(6.0, 0.3 * len(trace) + 2.0), 0.6 * n_blocks + 2.0)
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(entropy, aspect="auto", cmap="viridis")
    for b in range(n_blocks):
        for t, token in enumerate(trace):
            if token["blocks"][b]["route"] == "quantum":
                axes.add_patch(_box(t, b))
    axes.set_xticks(range(len(trace)))
    axes.set_xticklabels([visible_text(t["text"]) for t in trace], rotation=90,
                         fontsize=8, family="monospace")
    axes.set_yticks(range(n_blocks))
    axes.set_yticklabels([f"block {trace[0]['blocks'][b]['block']}" for b in range(n_blocks)])
    figure.colorbar(image, ax=axes, label="entropy S (nats)")
    axes.set_title(title, fontsize=9)
    return figure_png(figure)


def _box(x: int, y: int):
    from matplotlib.patches import Rectangle
    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5)


def energy_bars(rows: list[dict], title: str) -> bytes:
    """uJ per query per profile (log scale), one colour per label."""
    figure = new_figure(7, 0.4 * len(rows) + 1.4)
    axes = figure.add_subplot(1, 1, 1)
    colours = {"measured": "C2", "estimated": "C0", "predicted": "C1"}
    names = [f"{r['profile']} ({r['label']})" for r in rows][::-1]
    values = [r["energy_uj"] for r in rows][::-1]
    axes.barh(names, values, color=[colours[r["label"]] for r in rows][::-1])
    axes.set_xscale("log")  # devices differ by orders of magnitude
    axes.set_xlabel("energy per query, uJ")
    axes.set_title(title, fontsize=9)
    return figure_png(figure)
