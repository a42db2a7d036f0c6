"""Building post-training-quantized models: uniform, mixed (DQSS search) and from an assignment."""
from __future__ import annotations

import copy
import logging

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.layers import LayerPlan, QuantLayer, swap_layers
from ..core.mixed import MixedQuantizer, MixedQuantLayer, mixed_layers
from ..results import ASSIGNMENT_FORMAT, load_assignment, save_assignment  # noqa: F401  (the file format's owner)
from ..core.stats import ActStats
from ..core.strategy import LayerContext, Strategy

log = logging.getLogger(__name__)



def layer_context(model: nn.Module, plan: LayerPlan, stats: dict[str, ActStats]) -> LayerContext:
    """What a strategy sees of the planned layer ``plan`` of ``model``: its module and its calibration samples."""
    st = stats.get(plan.name)
    if st is None:
        raise KeyError(f"no calibration statistics for layer '{plan.name}'; the statistics file was computed "
                       "for another model or quantization policy: rerun the calibration")
    samples = torch.cat(st.samples) if st.samples else None
    return LayerContext(plan.name, model.get_submodule(plan.name), samples)


def _quantizers(strategy: Strategy, plan: LayerPlan, st: ActStats, ctx: LayerContext):
    return (strategy.build_weight_quantizer(plan.w_spec, ctx),
            strategy.build_act_quantizer(plan.a_spec, st, ctx))


def quantize_uniform(model: nn.Module, plans: dict[str, LayerPlan], stats: dict[str, ActStats],
                     strategy: Strategy) -> nn.Module:
    """Every planned layer quantized by the same strategy (a uniform baseline)."""
    return quantize_per_layer(model, plans, stats, {n: (strategy, strategy) for n in plans})


def quantize_per_layer(model: nn.Module, plans: dict[str, LayerPlan], stats: dict[str, ActStats],
                       choice: dict[str, tuple[Strategy, Strategy]]) -> nn.Module:
    """Each layer quantized by its own (weight strategy, activation strategy)."""
    qmodel = copy.deepcopy(model).eval()
    new = {}
    for name, plan in tqdm(plans.items(), desc="quantizers", leave=False):
        ctx = layer_context(qmodel, plan, stats)
        w_strat, a_strat = choice[name]
        wq = w_strat.build_weight_quantizer(plan.w_spec, ctx)
        aq = a_strat.build_act_quantizer(plan.a_spec, stats[name], ctx)
        new[name] = QuantLayer(ctx.module, wq, aq, plan.int32_bias)
    return swap_layers(qmodel, new).requires_grad_(False)


def quantize_mixed(model: nn.Module, plans: dict[str, LayerPlan], stats: dict[str, ActStats],
                   strategies: dict[str, Strategy], mode: str = "efficient") -> nn.Module:
    """Every planned layer becomes a mixed layer over all ``strategies``; only logits train."""
    qmodel = copy.deepcopy(model).eval().requires_grad_(False)
    new = {}
    for name, plan in tqdm(plans.items(), desc="candidates", leave=False):
        ctx = layer_context(qmodel, plan, stats)
        pairs = {s: _quantizers(strat, plan, stats[name], ctx) for s, strat in strategies.items()}
        wq = MixedQuantizer({s: p[0] for s, p in pairs.items()})
        aq = MixedQuantizer({s: p[1] for s, p in pairs.items()})
        new[name] = MixedQuantLayer(ctx.module, wq, aq, mode, plan.int32_bias)
    return swap_layers(qmodel, new)


# -- assignments ------------------------------------------------------------------------
def export_assignment(qmodel: nn.Module, plans: dict[str, LayerPlan], meta: dict,
                      choice: dict[str, tuple[str, str]] | None = None) -> dict:
    """The per-layer choice (``choice``, default the argmax) and the softmax weights of a searched model."""
    layers = []
    mixed = mixed_layers(qmodel)
    for name, plan in plans.items():
        m = mixed[name]
        entry = {"name": name, "w_bits": plan.w_spec.bits, "a_bits": plan.a_spec.bits}
        for k, (role, q) in enumerate((("weight", m.weight_quant), ("act", m.act_quant))):
            p = torch.softmax(q.logits.detach(), 0)
            entry[role] = q.choice() if choice is None else choice[name][k]
            entry[f"{role}_probs"] = {n: round(float(v), 6) for n, v in zip(q.names, p)}
        layers.append(entry)
    return {"format": ASSIGNMENT_FORMAT, **meta, "layers": layers}


def assignment_choice(assignment: dict, plans: dict[str, LayerPlan], strategies: dict[str, Strategy]
                      ) -> dict[str, tuple[str, str]]:
    """``{layer: (weight strategy, activation strategy)}`` of an assignment, checked against the plan."""
    chosen = {e["name"]: e for e in assignment["layers"]}
    if set(chosen) != set(plans):  # matched by name: the order of the file's layers does not matter
        missing, extra = sorted(set(plans) - set(chosen)), sorted(set(chosen) - set(plans))
        raise ValueError(f"assignment layers do not match the model's quantized layers (missing from the assignment: "
                         f"{missing[:5]}{'...' if len(missing) > 5 else ''}; not in the model: {extra[:5]}"
                         f"{'...' if len(extra) > 5 else ''}); it was searched for another backbone or quant policy")
    choice = {}
    for name, plan in plans.items():
        e = chosen[name]
        if (e["w_bits"], e["a_bits"]) != (plan.w_spec.bits, plan.a_spec.bits):
            raise ValueError(f"assignment of layer '{name}' is for W{e['w_bits']}A{e['a_bits']}, "
                             f"the plan asks W{plan.w_spec.bits}A{plan.a_spec.bits}")
        for role in ("weight", "act"):
            if e[role] not in strategies:
                raise KeyError(f"assignment uses strategy '{e[role]}' for layer '{name}', which is not "
                               f"among the configured strategies {sorted(strategies)}")
        choice[name] = (e["weight"], e["act"])
    return choice


def quantize_from_assignment(model: nn.Module, plans: dict[str, LayerPlan], stats: dict[str, ActStats],
                             assignment: dict, strategies: dict[str, Strategy]) -> nn.Module:
    """Rebuild the discrete quantized model of a search without searching again."""
    choice = assignment_choice(assignment, plans, strategies)
    return quantize_per_layer(model, plans, stats, {n: (strategies[w], strategies[a]) for n, (w, a) in choice.items()})
