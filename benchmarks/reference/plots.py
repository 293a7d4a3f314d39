"""The report's PNG plots: perplexity and CPU decode latency against parameters."""

from __future__ import annotations

from pathlib import Path

from .figures import Results, ppl

# ---------------------------------------------------------------------------- report: plots

def plot_points(results: Results) -> dict[str, list[tuple[int, float, float | None, str]]]:
    """(params, word perplexity, decode ms, label) per family."""
    families = {"dense (full width)": [], "dense (width-matched to QTF)": [], "QTF": [],
                "QTF ablation steps": []}
    for row in results.plan:
        if row.seed != 0:
            continue
        f = results.figures(row.group, row.size, row.variant)
        if not f.get("params"):
            continue
        if row.group == "baseline":
            family = "dense (width-matched to QTF)"
        elif row.group == "ablation":
            family = "QTF ablation steps"
        else:
            family = "QTF" if row.variant == "qtf" else "dense (full width)"
        families[family].append((f["params"], ppl(f), f.get("decode_ms"),
                                 f"{row.size} {row.variant}"))
    return families


def write_plots(results: Results, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = plot_points(results)
    markers = {"dense (full width)": "s", "dense (width-matched to QTF)": "D", "QTF": "o",
               "QTF ablation steps": "^"}
    written = []
    for index, (name, ylabel, title) in enumerate((
            ("reference_ppl_vs_params.png", "validation word perplexity (seed 0)",
             "Perplexity against parameters, WikiText-2"),
            ("reference_latency_vs_params.png", "CPU decode ms per token (ONNX, 1 thread)",
             "Measured CPU decode latency against parameters"))):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for family, points in families.items():
            shown = [(p, v[index]) for p, *v, _ in points if v[index] is not None]
            if shown:
                ax.scatter([p for p, _ in shown], [v for _, v in shown], label=family,
                           marker=markers[family])
                for (p, *v, label) in points:
                    if v[index] is not None and family != "QTF ablation steps":
                        ax.annotate(label.split()[0], (p, v[index]), fontsize=7,
                                    xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("total parameters")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "nothing measured yet", ha="center", transform=ax.transAxes)
        fig.tight_layout()
        path = folder / name
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
