"""DQSS mixed layers: a softmax relaxation over quantization strategies per layer.

For candidate activation quantizers A_i with weights alpha = softmax(a) and weight
quantizers W_j with beta = softmax(b):

* naive:      y = sum_i sum_j alpha_i beta_j conv(A_i(x), W_j(w))    (N_A x N_W convs)
* efficient:  y = conv(sum_i alpha_i A_i(x), sum_j beta_j W_j(w))     (one conv)

The two are equal because convolution is bilinear; the efficient form is simply a
:class:`~dqss.core.layers.QuantLayer` whose two quantizers are :class:`MixedQuantizer`.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from .layers import QuantLayer, swap_layers
from .qat import LearnedQuantizer
from .quant import FakeQuantizer, int32_bias_pairs, mix_bias, with_bias_gradient

MODES = ("efficient", "naive")


class _LeanMixture(torch.autograd.Function):
    """sum_i p_i Q_i(x) for fixed-range quantizers, keeping only ``x`` for the backward.

    Autograd would store every candidate output Q_i(x) to get d/dp_i; here they are
    recomputed one at a time in the backward (with their straight-through masks), so
    the memory of a mixed activation does not grow with the number of candidates.
    """

    @staticmethod
    def forward(ctx, x, probs, quantizers):
        ctx.quantizers = quantizers
        ctx.save_for_backward(x, probs)
        out = None
        for p, q in zip(probs, quantizers):
            term = q.values_and_mask(x)[0].mul_(p)  # p * Q(x), in place on Q(x)'s own new tensor
            out = term if out is None else out.add_(term)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, probs = ctx.saved_tensors
        grad_p = torch.empty_like(probs)
        pass_through = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        for i, q in enumerate(ctx.quantizers):
            values, inside = q.values_and_mask(x)
            grad_p[i] = values.mul_(grad).sum()  # (grad * Q(x)).sum(), in place
            if pass_through is not None:
                pass_through.add_(inside * probs[i])  # a tensor product: no device sync per candidate
        return (None if pass_through is None else grad * pass_through), grad_p, None


class _LeanLearnedMixture(torch.autograd.Function):
    """sum_i p_i Q_i(x; theta_i) for QAT candidates with closed-form gradients.

    The same recomputation as :class:`_LeanMixture`, and each candidate's parameters
    theta_i receive p_i * dL/dtheta_i: every candidate keeps learning its own step or
    clip under the mixture, from the one backward pass of the mini-batch.
    """

    @staticmethod
    def forward(ctx, x, probs, quantizers, *flat_params):
        ctx.quantizers = quantizers
        ctx.save_for_backward(x, probs, *flat_params)
        out = None
        for p, q, params in zip(probs, quantizers, _split(flat_params, quantizers)):
            term = p * q.quantize(x, *params)
            out = term if out is None else out.add_(term)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, probs, *flat_params = ctx.saved_tensors
        grad_p = torch.empty_like(probs)
        # d out / dx = sum_i p_i dQ_i/dx: accumulated once, applied to grad once
        slope = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        param_grads = []
        flat_grad = grad.reshape(-1)
        for i, (q, params) in enumerate(zip(ctx.quantizers, _split(flat_params, ctx.quantizers))):
            values, dydx, gparams = q.grads(x, grad, *params)
            grad_p[i] = torch.dot(flat_grad, values.reshape(-1))
            if slope is not None:
                slope.add_(torch.where(dydx, probs[i], 0.0) if dydx.dtype == torch.bool else dydx * probs[i])
            param_grads.extend(g * probs[i] for g in gparams)
        return (None if slope is None else grad * slope, grad_p, None, *param_grads)


def _split(flat, quantizers):
    out, pos = [], 0
    for q in quantizers:
        n = len(q.param_names)
        out.append(tuple(flat[pos:pos + n]))
        pos += n
    return out


class MixedQuantizer(nn.Module):
    """sum_i softmax(logits / tau)_i * candidate_i(x); or, pinned, one candidate alone.

    ``pinned`` (a candidate index, or None for the mixture) makes the forward that candidate's
    and nothing else: no mixture and no bookkeeping for the logits' gradient.  A whole network's
    discrete assignment is then evaluated by setting indices (:func:`pin`), without rebuilding it.
    """

    def __init__(self, candidates: dict[str, nn.Module]):
        super().__init__()
        self.names = list(candidates)
        self.candidates = nn.ModuleList(candidates.values())
        self.logits = nn.Parameter(torch.zeros(len(self.names)))
        self.tau = 1.0
        self.hard = False
        self.pinned: int | None = None
        self.sampled: int | None = None  # single-path search: this step's candidate (see sample_paths)
        self._fixed_steps = all(isinstance(q, FakeQuantizer) for q in self.candidates)  # steps never change

    def pin(self, name: str | None) -> None:
        """Forward only candidate ``name`` (None: the mixture again)."""
        if name is None:
            self.pinned = None
            return
        if name not in self.names:
            raise KeyError(f"'{name}' is not a candidate of this layer; candidates are {self.names}")
        self.pinned = self.names.index(name)

    def probs(self) -> torch.Tensor:
        """softmax(logits / tau); with ``hard`` the forward value is the argmax one-hot while the
        gradient is the softmax's (straight-through), so the search sees the discrete model it ends as."""
        p = torch.softmax(self.logits / self.tau, dim=0)
        if not self.hard:
            return p
        one_hot = torch.zeros_like(p).scatter_(0, torch.argmax(p.detach()).reshape(1), 1.0)
        return one_hot + (p - p.detach())

    def outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [q(x) for q in self.candidates]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pinned is not None:
            return self.candidates[self.pinned](x)
        if self.sampled is not None:
            # the sampled candidate alone (full gradient to its parameters); p_s / p_s.detach() is 1 in value
            # and gives the logits the straight-through gradient of that path (as in GDAS)
            p = torch.softmax(self.logits / self.tau, dim=0)[self.sampled]
            return self.candidates[self.sampled](x) * (p / p.detach())
        p = self.probs()
        if all(isinstance(q, FakeQuantizer) for q in self.candidates):
            if len(self.candidates) == 1:
                # p is the constant 1 (a softmax of one logit): the candidate's own straight-through pass, times
                # p / p.detach() (1 in value) to keep the logit in the graph: the same values and gradients as
                # the mixture below, without recomputing the candidate in the backward
                return self.candidates[0](x) * (p[0] / p[0].detach())
            return _LeanMixture.apply(x, p, tuple(self.candidates))
        if all(isinstance(q, LearnedQuantizer) and q.closed_form for q in self.candidates):
            params = [t for q in self.candidates for t in q.learned()]
            return _LeanLearnedMixture.apply(x, p, tuple(self.candidates), *params)
        out = p[0] * self.candidates[0](x)
        for i in range(1, len(self.candidates)):
            out = out + p[i] * self.candidates[i](x)
        return out

    def choice(self) -> str:
        return self.names[int(torch.argmax(self.logits))]

    def chosen(self) -> nn.Module:
        """The argmax candidate itself (with its learned parameters, in QAT)."""
        return self.candidates[int(torch.argmax(self.logits))]

    def extra_repr(self) -> str:
        return f"candidates={self.names}"


class MixedQuantLayer(QuantLayer):
    """A layer whose weight and activation quantizers are mixtures, in either mode."""

    def __init__(self, layer: nn.Module, weight_quant: MixedQuantizer, act_quant: MixedQuantizer,
                 mode: str = "efficient", int32_bias: bool = True):
        super().__init__(layer, weight_quant, act_quant, int32_bias)
        self.mode = mode
        self._weight_cache: torch.Tensor | None = None
        self._bias_cache: torch.Tensor | None = None

    def weight_candidates(self) -> torch.Tensor:
        """Stacked ``W_j``; cached while the weight is frozen (PTQ), recomputed in QAT."""
        w = self.layer.weight
        if w.requires_grad:
            return torch.stack(self.weight_quant.outputs(w))
        c = self._weight_cache
        if c is None or c.device != w.device or c.dtype != w.dtype:
            with torch.no_grad():
                c = self._weight_cache = torch.stack(self.weight_quant.outputs(w))
        return c

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"mixture mode must be one of {MODES}, got {value!r}")
        self._mode = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wq, aq = self.weight_quant, self.act_quant
        if wq.pinned is not None and aq.pinned is not None:
            w = self.layer.weight
            weight = wq.candidates[wq.pinned](w) if w.requires_grad else self.weight_candidates()[wq.pinned]
            return self.compute(aq.candidates[aq.pinned](x), weight, self.deployed_bias())
        if wq.sampled is not None or aq.sampled is not None:
            return self.compute(aq(x), wq(self.layer.weight), self.deployed_bias())
        weights = self.weight_candidates()
        beta = self.weight_quant.probs()
        if self.mode == "efficient":  # with the bias sum_ij alpha_i beta_j b_ij (dqss.core.quant.int32_bias)
            # one weight candidate: beta is the constant 1 (a softmax of one logit), so the layer needs no weight
            # gradient for it, only the candidate (the plain quantized convolution's cost)
            w_mix = weights[0] if len(weights) == 1 else torch.tensordot(beta, weights, dims=1)
            return self.compute(self.act_quant(x), w_mix, self.deployed_bias())
        alpha = self.act_quant.probs()
        acts = self.act_quant.outputs(x)
        pairs = self._bias_pairs()
        out = None
        for i, a in enumerate(acts):
            for j, w in enumerate(weights):
                term = (alpha[i] * beta[j]) * self.compute(a, w, None if pairs is None else pairs[i][j])
                out = term if out is None else out + term
        return out

    def bias_pairs(self) -> torch.Tensor:
        """``b_ij``: the bias rounded on every (activation, weight) candidate pair's int32 grid, ``[N_A, N_W, C]``;
        cached while the bias and the candidates' steps are fixed (PTQ), recomputed otherwise (QAT)."""
        c = self._bias_cache
        b = self.layer.bias
        fixed = not b.requires_grad and self.weight_quant._fixed_steps and self.act_quant._fixed_steps
        if c is None or not fixed or c.device != b.device:
            aq, wq = self.act_quant, self.weight_quant
            sa = torch.stack([q.step_size().reshape(()) for q in aq.candidates])
            sw = torch.stack([q.step_size(self.layer.weight).reshape(-1) for q in wq.candidates])
            c = int32_bias_pairs(b, sa, sw)
            self._bias_cache = c if fixed else None
        return c

    def deployed_bias(self) -> torch.Tensor | None:
        """As :meth:`QuantLayer.deployed_bias`, from :meth:`bias_pairs`: the pinned or sampled pair's bias, or the
        mixture's ``sum_ij alpha_i beta_j b_ij``."""
        b = self.layer.bias
        if not self.rounds_bias():
            return b
        pairs = self.bias_pairs()
        wq, aq = self.weight_quant, self.act_quant
        i = aq.pinned if aq.pinned is not None else aq.sampled
        j = wq.pinned if wq.pinned is not None else wq.sampled
        # one candidate: its probability is the constant 1, so the bias needs no gradient from it (which matters
        # on a CPU: oneDNN computes a bias's gradient in the convolution's weight-gradient kernel)
        pa = None if i is not None or len(aq.candidates) == 1 else aq.probs()
        pw = None if j is not None or len(wq.candidates) == 1 else wq.probs()
        pairs = pairs[slice(None) if i is None else slice(i, i + 1), slice(None) if j is None else slice(j, j + 1)]
        return mix_bias(pairs, b, pa, pw)

    def _bias_pairs(self):
        """The naive relaxation's bias of every (activation, weight) pair: ``b_ij`` on pair ``(i, j)``'s int32
        grid (with the bias's gradient), or None for float biases."""
        if not self.rounds_bias():
            return None
        b, grid = self.layer.bias, self.bias_pairs()
        return [[with_bias_gradient(grid[i, j].expand(b.shape).to(b.dtype), b) for j in range(grid.shape[1])]
                for i in range(grid.shape[0])]


def mixed_layers(model: nn.Module) -> dict[str, MixedQuantLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, MixedQuantLayer)}


def set_mode(model: nn.Module, mode: str) -> None:
    for m in mixed_layers(model).values():
        m.mode = mode


RELAXATIONS = ("soft", "hard")


def set_relaxation(model: nn.Module, relaxation: str) -> None:
    """'soft': the softmax mixture; 'hard': argmax forward, softmax gradient (straight-through)."""
    if relaxation not in RELAXATIONS:
        raise ValueError(f"relaxation must be one of {RELAXATIONS}, got {relaxation!r}")
    for m in mixed_layers(model).values():
        m.weight_quant.hard = m.act_quant.hard = relaxation == "hard"


def set_temperature(model: nn.Module, tau: float) -> None:
    for m in mixed_layers(model).values():
        m.weight_quant.tau = tau
        m.act_quant.tau = tau


def arch_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in mixed_layers(model).values() for p in (m.weight_quant.logits, m.act_quant.logits)]


def pin(model: nn.Module, assignment: dict[str, tuple[str, str]] | None) -> None:
    """Pin every mixed layer to its ``(weight, act)`` candidates; None unpins (the mixture again).

    An assignment must name every mixed layer: a partial one would leave some layers mixed."""
    layers = mixed_layers(model)
    if assignment is not None and set(assignment) != set(layers):
        differ = sorted(set(assignment) ^ set(layers))
        raise ValueError(f"the assignment does not name exactly the model's mixed layers (differing: {differ[:5]})")
    for name, m in layers.items():
        w, a = (None, None) if assignment is None else assignment[name]
        m.weight_quant.pin(w)
        m.act_quant.pin(a)


def sample_paths(model: nn.Module, generator: torch.Generator | None) -> None:
    """Single-path search: each mixed quantizer forwards one candidate drawn from its softmax (None: the
    mixture again)."""
    for m in mixed_layers(model).values():
        for q in (m.weight_quant, m.act_quant):
            if generator is None:
                q.sampled = None
            else:
                p = torch.softmax(q.logits.detach().float().cpu() / q.tau, dim=0)
                q.sampled = int(torch.multinomial(p, 1, generator=generator))


@contextmanager
def pinned(model: nn.Module, assignment: dict[str, tuple[str, str]]):
    """``model`` pinned to ``assignment`` inside the block (the discrete model, equal to the one
    :func:`dqss.algorithms.ptq.quantize_per_layer` builds for it), the mixture again after."""
    pin(model, assignment)
    try:
        yield model
    finally:
        pin(model, None)


def discretize(model: nn.Module, choice: dict[str, tuple[str, str]] | None = None) -> dict[str, tuple[str, str]]:
    """Replace every mixed layer of ``model`` (in place) by a plain quantized layer using the
    ``choice`` (default: the argmax) weight and activation candidates; returns ``{layer: (weight, act)}``.

    In QAT the chosen candidates keep the parameters they learned under the mixture.
    """
    new, chosen = {}, {}
    for name, m in mixed_layers(model).items():
        wq, aq = m.weight_quant, m.act_quant
        w, a = (wq.choice(), aq.choice()) if choice is None else choice[name]
        chosen[name] = (w, a)
        for q in (wq, aq):
            q.pinned = q.sampled = None
        new[name] = QuantLayer(m.layer, wq.candidates[wq.names.index(w)], aq.candidates[aq.names.index(a)],
                               m.int32_bias)
    swap_layers(model, new)
    return chosen
