"""Each peer built here against its paper's own figures: parameters and GFLOPs at the paper's input.

``segmate bench --check-peers`` prints :func:`paper_check_markdown`. A paper's "GFLOPs" are read in
the counting convention its figures follow (:class:`~.registry.PaperFigures`), and the table also
gives the benchmark's own count (torch.utils.flop_counter multiply-accumulates), which is what
every benchmark row reports.
"""
from __future__ import annotations

from dataclasses import dataclass

from segmatecore.bench.peers.costs import NetworkCost
from segmatecore.bench.peers.registry import PEERS, PeerSpec

TOLERANCE = 0.10   # a peer more than 10 % off its paper's figure is not accepted without an explanation

COUNT_NAMES = {
    "gmacs": "torch.utils.flop_counter MACs",
    "gmacs_layers": "MACs of convolution and linear layers",
    "gmacs_layers_transposed_at_output": "MACs of convolution and linear layers, transposed convolutions per output voxel",
}


@dataclass(frozen=True)
class PaperCheck:
    """One peer's figures against its paper's."""

    spec: PeerSpec
    cost: NetworkCost

    @property
    def params_deviation(self) -> float:
        return self.cost.params_m / self.spec.paper.params_m - 1

    @property
    def params_accepted(self) -> bool:
        """Within 10 % of the paper, or within one point of the documented deviation where the paper's
        count cannot be met by the network it describes."""
        documented = self.spec.paper.params_deviation
        if documented is None:
            return abs(self.params_deviation) <= TOLERANCE
        return abs(self.params_deviation - documented) <= 0.01

    @property
    def gflops_accepted(self) -> bool:
        return abs(self.gflops_deviation) <= TOLERANCE

    @property
    def gmacs_in_paper_convention(self) -> float:
        return getattr(self.cost, self.spec.paper.count)

    @property
    def gflops_deviation(self) -> float:
        return self.gmacs_in_paper_convention / self.spec.paper.gflops - 1


def paper_checks() -> list[PaperCheck]:
    """Every peer that has paper figures, counted at the paper's input shape and class count."""
    return [PaperCheck(spec, spec.paper_cost()) for spec in PEERS.values() if spec.paper is not None]


def _shape(shape: tuple[int, ...], classes: int) -> str:
    return f"{shape[1]} x " + " x ".join(str(n) for n in shape[2:]) + f", {classes} class{'es' if classes > 1 else ''}"


def paper_check_markdown(checks: list[PaperCheck] | None = None) -> str:
    """The check as a markdown table, one row per peer, and the documented deviations below it."""
    checks = paper_checks() if checks is None else checks
    lines = ["| peer | paper's input (source) | params M: paper / here | deviation | \"GFLOPs\": paper / here "
             "in the paper's convention | deviation | the paper's convention | GMACs here (flop_counter) |",
             "|---|---|---|---|---|---|---|---|"]
    notes = []
    for c in checks:
        paper = c.spec.paper
        documented = paper.params_deviation is not None
        lines.append(f"| {c.spec.title} | {_shape(paper.input_shape, paper.num_classes)} ({paper.source}) "
                     f"| {paper.params_m:.2f} / {c.cost.params_m:.3f} | {c.params_deviation:+.1%}"
                     f"{' (documented)' if documented else ''} "
                     f"| {paper.gflops:.2f} / {c.gmacs_in_paper_convention:.2f} | {c.gflops_deviation:+.1%} "
                     f"| {COUNT_NAMES[paper.count]}: {paper.evidence} | {c.cost.gmacs:.2f} |")
        if documented:
            notes.append(f"{c.spec.title}, parameters: {paper.params_note}.")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"
