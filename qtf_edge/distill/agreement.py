"""Does the deploy form decide and predict as the simulated model does?

Two questions, on the same token windows:

1. Folding alone (`decisions`): each deploy block's encoder is given exactly the input
   the simulated block's encoder saw, so any difference comes from folding the circuit
   and from Jacobi against LAPACK eigenvalues, never from the splines. Routes (hardness
   above the router's threshold) and adaptive ranks (r_min + round(slope * S)) must
   agree. A token whose simulated entropy lies within TIE_TOLERANCE nats of a decision
   boundary (the threshold, or a rank's rounding midpoint) is an exact tie up to float32
   rounding: it counts as a tie, not as a disagreement.
2. The whole deploy form (`end_to_end`): its own routes, ranks and logits against the
   simulated model's. Spline fit errors propagate through the blocks, so this agreement
   is reported but has no 100% target; the logits give max / mean |difference| and the
   share of positions whose most likely next token is the same.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from qtf_edge.evaluate import window_batches
from qtf_edge.logit_agreement import LogitAgreement
from qtf_edge.model.ffn import adaptive_ranks

TIE_TOLERANCE = 1e-5  # nats: the folded entropy's measured distance from LAPACK's is ~3e-6


@dataclass
class Agreement:
    route_decisions: int = 0    # (token, block) routes compared
    route_agree: int = 0
    rank_decisions: int = 0     # (token, block) adaptive ranks compared
    rank_agree: int = 0
    ties: int = 0               # (token, block) pairs within TIE_TOLERANCE of a boundary
    max_entropy_difference: float = 0.0  # nats

    def to_dict(self) -> dict:
        def rate(agree, total):
            return agree / total if total else None
        return {**asdict(self), "route_agreement": rate(self.route_agree, self.route_decisions),
                "rank_agreement": rate(self.rank_agree, self.rank_decisions)}


def _decide(block, entropy: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    routed = ranks = None
    if block.router is not None:
        routed = block.encoder.hardness(entropy) > block.router.threshold
    if block.config.adaptive_rank:
        ranks = adaptive_ranks(entropy, block.encoder.max_entropy, block.config.r_min,
                               block.config.r_max)
    return routed, ranks


def _near_boundary(block, entropy: torch.Tensor) -> torch.Tensor:
    """Tokens whose decisions an entropy change of TIE_TOLERANCE could flip."""
    near = torch.zeros_like(entropy, dtype=torch.bool)
    s_max = block.encoder.max_entropy
    if block.router is not None:
        near |= (entropy - block.router.threshold * s_max).abs() <= TIE_TOLERANCE
    if block.config.adaptive_rank:
        slope = (block.config.r_max - block.config.r_min) / s_max
        scaled = slope * entropy
        near |= ((scaled - scaled.floor() - 0.5).abs() <= slope * TIE_TOLERANCE)
    return near


def _count(agreement: Agreement, expected, got, skip: torch.Tensor) -> None:
    """Add one block's decisions; `skip` marks ties, which are counted apart."""
    keep = ~skip
    agreement.ties += int(skip.sum())
    (routes, ranks), (got_routes, got_ranks) = expected, got
    if routes is not None:
        agreement.route_decisions += int(keep.sum())
        agreement.route_agree += int(((routes == got_routes) & keep).sum())
    if ranks is not None:
        agreement.rank_decisions += int(keep.sum())
        agreement.rank_agree += int(((ranks == got_ranks) & keep).sum())


@torch.inference_mode()
def compare(simulated, deploy, windows: list[list[int]], batch_size: int = 8
            ) -> tuple[Agreement, Agreement, LogitAgreement]:
    """(folding-only decisions, end-to-end decisions, logits) over the windows."""
    folding, end_to_end, logits = Agreement(), Agreement(), LogitAgreement()
    encoder_inputs: dict[int, torch.Tensor] = {}
    hooks = [block.encoder.register_forward_pre_hook(
        lambda module, inputs, i=i: encoder_inputs.__setitem__(i, inputs[0]))
        for i, block in enumerate(simulated.blocks) if block.encoder is not None]
    simulated.eval(), deploy.eval()
    device = next(simulated.parameters()).device
    try:
        for ids in window_batches(windows, batch_size, device):
            inputs = ids[:, :-1]
            reference = simulated(inputs).float()
            traces = [b.trace for b in simulated.blocks]
            candidate = deploy(inputs).float()
            logits.add(candidate.cpu().numpy(), reference.cpu().numpy())
            for i, (sim_block, dep_block) in enumerate(zip(simulated.blocks, deploy.blocks)):
                if sim_block.encoder is None:
                    continue
                reference_entropy = traces[i].entropy.float()
                folded_entropy = dep_block.encoder(encoder_inputs[i])[1].float()
                folding.max_entropy_difference = max(
                    folding.max_entropy_difference,
                    float((folded_entropy - reference_entropy).abs().max()))
                expected = _decide(sim_block, reference_entropy)
                _count(folding, expected, _decide(dep_block, folded_entropy),
                       _near_boundary(sim_block, reference_entropy))
                deploy_entropy = dep_block.trace.entropy.float()
                end_to_end.max_entropy_difference = max(
                    end_to_end.max_entropy_difference,
                    float((deploy_entropy - reference_entropy).abs().max()))
                _count(end_to_end, expected, _decide(dep_block, deploy_entropy),
                       torch.zeros_like(reference_entropy, dtype=torch.bool))
    finally:
        for hook in hooks:
            hook.remove()
    return folding, end_to_end, logits
