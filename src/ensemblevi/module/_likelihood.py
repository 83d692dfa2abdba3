"""Per-cell count log-likelihoods for the training loss, with fewer transcendental calls.

Measured reason for writing these by hand (``benchmarks/bench_ensemble_speed.py``): in a
K-member training step on a 2-core CPU, scvi-tools' ``log_zinb_positive`` spent over a
third of the step in ``lgamma``/``digamma`` on the full ``(K, B, G)`` tensor, computing
``lgamma(theta)`` and ``lgamma(x + 1)`` per element although they depend on the gene
(or the cell) only. The functions here return exactly the same values summed over genes
(tested against scvi-tools in float64) and compute those two terms once:

* ``sum_g lgamma(x + 1)`` depends on the data only: once per minibatch, ``(B,)``;
* ``sum_g [lgamma(x + theta) - lgamma(theta)]`` is exactly 0 on zero counts, so with
  gene-wise dispersion it is evaluated on the non-zero counts only.

The outputs used by callers (the distributions in ``generative``) remain scvi-tools'
``ZeroInflatedNegativeBinomial`` / ``NegativeBinomial`` / ``Poisson``.

When a gradient is needed, the ZINB and NB sums run as one hand-written
``torch.autograd.Function`` (:class:`_CountLogProbSum`): the forward pass computes the
log-likelihood and its derivatives with respect to ``mu``, ``theta`` and ``zi_logits``
together, sharing ``log(theta + mu)``, one ``exp(-|zi_logits|)`` for both the softplus and
the sigmoid, and the zero-count mixture weight; the backward pass only scales the stored
derivatives by the incoming per-cell gradient. Autograd through the composed expression
keeps about twice as many ``(K, B, G)`` intermediates and runs about twice as many
element-wise kernels (measured in ``benchmarks/bench_likelihood.py``). No library ships
this: scvi-tools' ``log_zinb_positive`` is written for autograd.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F

EPS = 1e-8  # as scvi-tools' log_nb_positive / log_zinb_positive


N_TABLE = 16  # counts up to this use per-gene tables instead of lgamma/digamma


def _gamma_differences(
    xv: torch.Tensor, cols: torch.Tensor, th: torch.Tensor, digamma: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``lgamma(x + theta) - lgamma(theta)`` and ``digamma(x + theta) - digamma(theta)``.

    For the non-zero counts ``xv`` (genes ``cols``) and per-gene ``th`` ``(..., G)``;
    returns two ``(..., nnz)`` tensors (the second ``None`` without ``digamma``: the
    log-likelihood needs only the first, and its table is half the work of each call of
    the streamed analysis). Integer counts up to :data:`N_TABLE` (most scRNA-seq counts)
    are looked up in per-gene tables built from the recurrences ``lgamma(t + 1) =
    lgamma(t) + log t`` and ``digamma(t + 1) = digamma(t) + 1 / t`` (``N_TABLE x G`` logs
    instead of an lgamma and a digamma per non-zero count); larger or non-integer counts
    are computed directly.
    """
    n_genes = th.shape[-1]
    steps = th.unsqueeze(-2) + torch.arange(N_TABLE, dtype=th.dtype, device=th.device)[:, None]
    lg_table = torch.cumsum(torch.log(steps), dim=-2).flatten(-2)  # row j: x = j + 1
    xi = xv.long()
    small = (xi <= N_TABLE) & (xi.to(xv.dtype) == xv)
    idx = (xi.clamp(1, N_TABLE) - 1) * n_genes + cols
    lg = lg_table.index_select(-1, idx)
    dg = None
    if digamma:
        dg_table = torch.cumsum(steps.reciprocal(), dim=-2).flatten(-2)
        dg = dg_table.index_select(-1, idx)
    if not bool(small.all()):
        big = torch.nonzero(~small, as_tuple=True)[0]
        th_big = th.index_select(-1, cols[big])
        xt = xv[big] + th_big
        lg = lg.index_copy(-1, big, torch.lgamma(xt) - torch.lgamma(th_big))
        if digamma:
            dg = dg.index_copy(-1, big, torch.digamma(xt) - torch.digamma(th_big))
    return lg, dg


def _lgamma_ratio_sum(x: torch.Tensor, theta: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``sum_g [lgamma(x + theta) - lgamma(theta)]`` per cell, shaped ``shape[:-1]``.

    Zero counts contribute exactly 0, so with a per-gene theta (``(..., 1, G)``) on CPU only
    the non-zero counts are evaluated (:func:`_gamma_differences`). Any other theta shape,
    or an accelerator, takes the dense path.
    """
    if _gene_theta(x, theta):
        rows, cols = torch.nonzero(x, as_tuple=True)
        lg, _ = _gamma_differences(x[rows, cols], cols, theta[..., 0, :], digamma=False)
        acc = lg.new_zeros(*lg.shape[:-1], x.shape[0]).index_add_(lg.dim() - 1, rows, lg)
        return acc.expand(shape[:-1])
    return (torch.lgamma(x + theta) - torch.lgamma(theta)).sum(-1).expand(shape[:-1])


def _nb_log_prob_sum(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Sum over genes of the negative-binomial log-pmf (scvi-tools' parameterisation).

    ``x`` is ``(B, G)``; ``mu`` ``(..., B, G)``; ``theta`` broadcastable to ``mu`` (e.g.
    ``(K, 1, G)``). Returns ``(..., B)``.
    """
    log_theta_mu = torch.log(theta + mu + EPS)
    dense = theta * (torch.log(theta + EPS) - log_theta_mu) + x * (
        torch.log(mu + EPS) - log_theta_mu
    )
    shape = torch.broadcast_shapes(mu.shape, x.shape, theta.shape)
    return dense.sum(-1) + _lgamma_ratio_sum(x, theta, shape) - torch.lgamma(x + 1).sum(-1)


def _zinb_log_prob_sum(
    x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, zi_logits: torch.Tensor
) -> torch.Tensor:
    """Sum over genes of the zero-inflated negative-binomial log-pmf (scvi-tools' form).

    Same shapes as :func:`nb_log_prob_sum`; ``zi_logits`` like ``mu``. Returns ``(..., B)``.
    """
    softplus_pi = F.softplus(-zi_logits)
    log_theta_mu = torch.log(theta + mu + EPS)
    pi_theta_log = -zi_logits + theta * (torch.log(theta + EPS) - log_theta_mu)
    is_zero = x < EPS
    # zero counts: log(pi + (1 - pi) NB(0)); non-zero: log(1 - pi) + log NB(x)
    dense = (
        torch.where(is_zero, F.softplus(pi_theta_log), pi_theta_log)
        - softplus_pi
        + x * (torch.log(mu + EPS) - log_theta_mu)
    )
    shape = torch.broadcast_shapes(mu.shape, x.shape, theta.shape, zi_logits.shape)
    return dense.sum(-1) + _lgamma_ratio_sum(x, theta, shape) - torch.lgamma(x + 1).sum(-1)


def poisson_log_prob_sum(x: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
    """Sum over genes of the Poisson log-pmf; ``lgamma(x + 1)`` once per minibatch.

    Parameters
    ----------
    x
        Counts ``(B, G)``.
    rate
        Poisson rates ``(..., B, G)``.
    """
    return (torch.xlogy(x, rate) - rate).sum(-1) - torch.lgamma(x + 1).sum(-1)


def normal_log_prob_sum(x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Sum over genes of the normal log-density (``gene_likelihood="normal"``).

    The same values as ``torch.distributions.Normal(loc, scale).log_prob(x).sum(-1)``
    without building the broadcast distribution.

    Parameters
    ----------
    x
        Data ``(B, G)``.
    loc
        Means ``(..., B, G)``.
    scale
        Standard deviations, broadcastable to ``loc`` (e.g. ``(K, 1, G)``).
    """
    z = (x - loc) / scale
    return (-0.5 * z.square() - torch.log(scale)).sum(-1) - 0.5 * math.log(2 * math.pi) * x.shape[
        -1
    ]


# ----------------------------------------------------------------- fused forward/backward
def _sum_to(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Reduce a broadcast gradient back to an input's shape."""
    if t.shape == shape:
        return t
    lead = t.dim() - len(shape)
    if lead:
        t = t.sum(tuple(range(lead)))
    dims = tuple(i for i, n in enumerate(shape) if n == 1 and t.shape[i] != 1)
    return t.sum(dims, keepdim=True) if dims else t


def _dense_terms(x, mu, theta, zi_logits):
    """Per-cell log-likelihood sums without the lgamma terms, and the per-element derivatives.

    ``f = where(x == 0, softplus(a - pi), a - pi) - softplus(-pi) + x (log mu - log T)``
    with ``T = theta + mu``, ``a = theta (log theta - log T)`` = log NB(0). With ``w`` the
    weight of the NB part (``sigmoid(a - pi)`` on zeros, 1 elsewhere):
    ``df/dmu = x / mu - (x + w theta) / T``,
    ``df/dtheta = w (log theta + theta / theta - log T - theta / T) - x / T``,
    ``df/dpi = sigmoid(-pi) - w``. NB is the same with ``pi -> -inf`` (``w = 1``).
    ``EPS`` sits where scvi-tools puts it, so values and gradients match its autograd.
    """
    # in-place where a buffer is dead: fewer (K, B, G) allocations (and page faults)
    mu_eps = mu + EPS
    log_t = torch.add(theta, mu_eps)
    inv_t = log_t.reciprocal()
    log_t = log_t.log_()
    log_theta = torch.log(theta + EPS)  # per-gene shape for gene-wise dispersion
    theta_inv_t = theta * inv_t
    x_inv_t = inv_t.mul_(x)
    a = torch.sub(log_theta, log_t).mul_(theta)
    x_term = torch.sub(torch.log(mu_eps), log_t).mul_(x)
    dmu = torch.div(x, mu_eps) - x_inv_t  # mu may be smaller than the broadcast shape
    del mu_eps
    da_dtheta = log_t.neg_().add_(log_theta + theta / (theta + EPS)).sub_(theta_inv_t)
    if zi_logits is None:
        return a.add_(x_term).sum(-1), dmu.sub_(theta_inv_t), da_dtheta.sub_(x_inv_t), None
    is_zero = x < EPS
    neg_pi = -zi_logits
    z = a.add_(neg_pi)
    # zero counts: log(pi + (1 - pi) NB(0)); non-zero: log(1 - pi) + log NB(x)
    f = torch.where(is_zero, F.softplus(z), z).sub_(F.softplus(neg_pi)).add_(x_term)
    w = torch.where(is_zero, torch.sigmoid(z), 1.0)
    dmu = dmu.addcmul_(w, theta_inv_t, value=-1.0)
    dtheta = da_dtheta.mul_(w).sub_(x_inv_t)
    dpi = torch.sigmoid(neg_pi) - w
    return f.sum(-1), dmu, dtheta, dpi


def _grad_terms(g, dmu, dtheta, dpi, reduce_theta: bool):
    """Chain rule of the backward pass: ``g * d`` for each derivative given (``None``: no
    gradient wanted), the dispersion's summed over cells when it is per gene
    (``reduce_theta``), so no ``(K, B, G)`` product of it is kept."""

    def times(d):
        return None if d is None else g * d

    g_theta = times(dtheta)
    if reduce_theta and g_theta is not None:
        g_theta = g_theta.sum(-2, keepdim=True)
    return times(dmu), g_theta, times(dpi)


logger = logging.getLogger(__name__)


@dataclasses.dataclass
class CompileRun:
    """What one :func:`compiled_likelihood` block asked for and got.

    Attributes
    ----------
    enabled
        The block asked for the compiled kernel.
    compiled_calls
        Kernel calls (forward or backward) that ran compiled code.
    failed
        Why the block fell back to the eager kernel (``None``: it did not).
    """

    enabled: bool
    compiled_calls: int = 0
    failed: str | None = None

    @property
    def active(self) -> bool:
        """Whether kernel calls in the block still try the compiled code."""
        return self.enabled and self.failed is None


#: the innermost ``compiled_likelihood`` block of this context (``None``: eager); a
#: context variable, not a process-wide switch, so a block and its failure stay its own
_BLOCK: ContextVar[CompileRun | None] = ContextVar("ensemblevi_compile_block", default=None)
#: the compiled callables (a cache: each block decides whether they are used)
_KERNELS: dict[str, Callable] = {}
#: fallback reasons already logged in this process (each is logged once)
_LOGGED: set[str] = set()


#: Training steps from which ``EnsembleSCVI.train`` compiles the likelihood by default.
#: Compiling both minibatch shapes of a K = 4 ``heartlike`` run took 24-31 s on the
#: project's 2-core CPU with a cold cache and 5 s with inductor's disk cache warm
#: (``benchmarks/bench_compile_time.py``, machine shared), and saves about 10 ms a K = 4
#: step there (``docs/benchmarks.md``): from a cold start it pays from about 3,000 steps.
#: A default ``heartlike`` run (400 epochs of 146 steps) has 58,400.
COMPILE_MIN_STEPS = 3000


def should_compile(
    n_cells: int, batch_size: int, max_epochs: int | None, train_size: float | None
) -> bool:
    """Whether a training run is long enough to compile the likelihood by default.

    Parameters
    ----------
    n_cells
        Cells of the AnnData.
    batch_size
        Cells per minibatch.
    max_epochs
        Epochs (``None``: scvi-tools' heuristic for ``n_cells``).
    train_size
        Training fraction (``None``: scvi-tools' default, 0.9).
    """
    from scvi.model._utils import get_max_epochs_heuristic

    epochs = max_epochs if max_epochs is not None else get_max_epochs_heuristic(n_cells)
    steps_per_epoch = math.ceil(n_cells * (0.9 if train_size is None else train_size) / batch_size)
    return epochs * steps_per_epoch >= COMPILE_MIN_STEPS


def _fall_back(run: CompileRun, err: BaseException) -> None:
    """Run the rest of ``run``'s block eagerly; log why, once per reason and process."""
    reason = f"{type(err).__name__}: {err}".splitlines()[0][:200]
    run.failed = reason
    if reason not in _LOGGED:
        _LOGGED.add(reason)
        logger.warning(
            "torch.compile of the likelihood failed (%s); using the eager kernel.", reason
        )


@contextmanager
def compiled_likelihood(enabled: bool = True) -> Iterator[CompileRun]:
    """Run the fused kernel's element-wise part through ``torch.compile`` inside the block.

    The element-wise chain of :func:`_dense_terms` has fixed shapes per minibatch size, so
    it compiles once per ``(K, B, G)`` (twice per epoch at most: the last minibatch is
    smaller) into one loop over the tensor; the lgamma/digamma parts on non-zero counts,
    whose size changes every step, stay outside it. Needs a working ``torch.compile``
    backend (a C++ compiler on CPU, Triton on GPU). Where compiling fails (no compiler,
    an unsupported platform, an error inside the compiler), the rest of the block runs the
    eager kernel, with the same values, and one warning per reason and process says why.
    The setting is the block's own (a context variable): it leaves no switch behind, and a
    failure in one block does not turn compilation off for the next.

    Parameters
    ----------
    enabled
        Compile (``False``: the block runs the eager kernel).

    Yields
    ------
    CompileRun
        The block's record: ``compiled_calls`` counts the kernel calls that ran compiled,
        ``failed`` says why it fell back.
    """
    run = CompileRun(enabled=bool(enabled))
    if run.enabled and not _KERNELS:
        try:
            kernels = {
                "fn": torch.compile(_dense_terms, dynamic=False),
                "grad": torch.compile(_grad_terms, dynamic=False),
            }
        except Exception as err:  # e.g. torch.compile unsupported on this Python
            _fall_back(run, err)
        else:
            _KERNELS.update(kernels)
    token = _BLOCK.set(run)
    try:
        yield run
    finally:
        _BLOCK.reset(token)


def _run(name: str, eager, run: CompileRun | None, *args):
    fn = _KERNELS.get(name)
    if run is not None and run.active and fn is not None:
        try:
            out = fn(*args)
        except Exception as err:  # compiler missing or broken: an eager retry is exact
            out = eager(*args)  # an error of the inputs themselves is raised from here
            _fall_back(run, err)
            return out
        run.compiled_calls += 1
        return out
    return eager(*args)


def _gene_theta(x: torch.Tensor, theta: torch.Tensor) -> bool:
    """Whether the non-zero-only lgamma path applies: gene-wise theta, on CPU.

    On an accelerator ``nonzero`` would read its size back to the host every step, and
    the dense element-wise lgamma costs little there, so the dense path is used.
    """
    return x.dim() == 2 and theta.dim() >= 2 and theta.shape[-2] == 1 and x.device.type == "cpu"


class _CountLogProbSum(torch.autograd.Function):
    """Per-cell ZINB (or NB, ``zi_logits=None``) log-likelihood sums, fused.

    Returns the same values as :func:`_zinb_log_prob_sum` / :func:`_nb_log_prob_sum`;
    the gradients are computed in the forward pass (tested against autograd through
    scvi-tools' ``log_zinb_positive`` in float64, and with ``gradcheck``).
    """

    @staticmethod
    def forward(ctx, x, mu, theta, zi_logits):
        shapes = [x.shape, mu.shape, theta.shape] + ([] if zi_logits is None else [zi_logits.shape])
        shape = torch.broadcast_shapes(*shapes)
        # the block's compile setting travels with the graph: backward may run in another
        # thread (autograd's device threads), where the context variable is not set
        ctx.compile_run = _BLOCK.get()
        out, dmu, dtheta, dpi = _run("fn", _dense_terms, ctx.compile_run, x, mu, theta, zi_logits)
        if _gene_theta(x, theta):
            # lgamma(x + theta) - lgamma(theta) on non-zero counts only (0 on zeros)
            rows, cols = torch.nonzero(x, as_tuple=True)
            lg, dg = _gamma_differences(x[rows, cols], cols, theta[..., 0, :])
            out = out + lg.new_zeros(*lg.shape[:-1], x.shape[0]).index_add_(lg.dim() - 1, rows, lg)
            ctx.sparse = (rows, cols, dg, theta.shape[-1])
        else:
            out = out + (torch.lgamma(x + theta) - torch.lgamma(theta)).sum(-1)
            dtheta = dtheta + torch.digamma(x + theta) - torch.digamma(theta)
            ctx.sparse = None
        out = out.expand(shape[:-1]) - torch.lgamma(x + 1).sum(-1)
        ctx.shapes = (mu.shape, theta.shape, None if zi_logits is None else zi_logits.shape)
        ctx.save_for_backward(dmu, dtheta, dpi)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        dmu, dtheta, dpi = ctx.saved_tensors
        mu_shape, theta_shape, zi_shape = ctx.shapes
        _, need_mu, need_theta, need_pi = ctx.needs_input_grad
        wanted = (
            dmu if need_mu else None,
            dtheta if need_theta else None,
            dpi if need_pi else None,
        )
        reduce_theta = len(theta_shape) >= 2 and theta_shape[-2] == 1
        g_mu, g_theta, g_pi = _run(
            "grad", _grad_terms, ctx.compile_run, grad.unsqueeze(-1), *wanted, reduce_theta
        )
        if ctx.sparse is not None and g_theta is not None:
            rows, cols, dg, n_genes = ctx.sparse
            g_cells = grad.expand(*dtheta.shape[:-1])  # (..., B)
            # sum_b g_b [digamma(x_bg + theta_g) - digamma(theta_g)] over non-zeros
            part = g_cells.new_zeros(*g_cells.shape[:-1], n_genes)
            part.index_add_(part.dim() - 1, cols, g_cells.index_select(-1, rows) * dg)
            g_theta = g_theta + part.unsqueeze(-2)
        return (
            None,
            None if g_mu is None else _sum_to(g_mu, mu_shape),
            None if g_theta is None else _sum_to(g_theta, theta_shape),
            None if g_pi is None else _sum_to(g_pi, zi_shape),
        )


def _fused(x, *params) -> bool:
    return torch.is_grad_enabled() and any(p is not None and p.requires_grad for p in params)


def nb_log_prob_sum(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Sum over genes of the negative-binomial log-pmf (scvi-tools' parameterisation).

    Returns ``(..., B)``; fused forward/backward when a gradient is needed.

    Parameters
    ----------
    x
        Counts ``(B, G)``.
    mu
        Means ``(..., B, G)``.
    theta
        Inverse dispersions, broadcastable to ``mu`` (e.g. ``(K, 1, G)``).
    """
    if _fused(x, mu, theta):
        return _CountLogProbSum.apply(x, mu, theta, None)
    return _nb_log_prob_sum(x, mu, theta)


def zinb_log_prob_sum(
    x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, zi_logits: torch.Tensor
) -> torch.Tensor:
    """Sum over genes of the zero-inflated negative-binomial log-pmf (scvi-tools' form).

    Returns ``(..., B)``; fused forward/backward when a gradient is needed.

    Parameters
    ----------
    x
        Counts ``(B, G)``.
    mu
        Means ``(..., B, G)``.
    theta
        Inverse dispersions, broadcastable to ``mu`` (e.g. ``(K, 1, G)``).
    zi_logits
        Zero-inflation logits, like ``mu``.
    """
    if _fused(x, mu, theta, zi_logits):
        return _CountLogProbSum.apply(x, mu, theta, zi_logits)
    return _zinb_log_prob_sum(x, mu, theta, zi_logits)
