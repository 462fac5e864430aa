"""Mamba-1 selective state-space block in pure PyTorch, parameter-compatible with ``mamba_ssm.Mamba``.

The parameters carry the names and shapes of mamba-ssm's ``Mamba`` (``mamba_ssm/modules/mamba_simple.py``),
so a state dict moves between this module (any device) and mamba-ssm (CUDA) unchanged. On CUDA, with a
working mamba-ssm build, the scan runs in its fused ``selective_scan_fn`` kernel; on CUDA without it in
:func:`selective_scan_parallel` (few launches); on CPU in :func:`selective_scan_sequential` (least work).
"""

from __future__ import annotations

import functools
import importlib
import math
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

# A broken mamba-ssm build fails at import in several ways: ImportError "undefined symbol" from a
# selective_scan_cuda .so built against another torch, OSError from a missing libcudart / libc10,
# RuntimeError raised by triton or torch.cuda during import, AttributeError from mismatched versions.
_KERNEL_IMPORT_ERRORS = (ImportError, OSError, RuntimeError, AttributeError)


@functools.cache
def _load_selective_scan_kernel() -> tuple[Callable | None, str | None]:
    """Import mamba-ssm's ``selective_scan_fn`` once: ``(function, None)`` or ``(None, reason)``."""
    try:
        module = importlib.import_module("mamba_ssm.ops.selective_scan_interface")
        return module.selective_scan_fn, None
    except _KERNEL_IMPORT_ERRORS as error:
        return None, f"importing mamba_ssm.ops.selective_scan_interface failed with {type(error).__name__}: {error}"


def mamba_kernels_available() -> bool:
    """Whether mamba-ssm's CUDA ``selective_scan_fn`` imports (tried once, then cached).

    :class:`Mamba` uses it for CUDA tensors when this is ``True``; see
    :func:`mamba_kernels_unavailable_reason` for why it is not.
    """
    return _load_selective_scan_kernel()[0] is not None


def mamba_kernels_unavailable_reason() -> str | None:
    """Why mamba-ssm's kernels could not be imported (``None`` when they can)."""
    return _load_selective_scan_kernel()[1]


def _prepare_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """Validate shapes, upcast, apply the bias / softplus to ``delta``; move time to the front.

    Returns ``u``, then ``delta``, ``delta * u``, ``B`` and ``C`` time-major (``(L, batch, ...)``), and ``A``:
    slices ``[t]`` of a time-major tensor are contiguous, which the loop and the doubling scan both use.
    """
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(
            f"u and delta must both have shape (batch, d_inner, L), got {tuple(u.shape)} and {tuple(delta.shape)}."
        )
    batch, d_inner, length = u.shape
    if A.dim() != 2 or A.shape[0] != d_inner:
        raise ValueError(f"A must have shape ({d_inner}, d_state), got {tuple(A.shape)}.")
    d_state = A.shape[1]
    for name, tensor in (("B", B), ("C", C)):
        if tensor.shape != (batch, d_state, length):
            raise ValueError(
                f"{name} must be input-dependent with shape ({batch}, {d_state}, {length}), got {tuple(tensor.shape)}."
            )
    if D is not None and D.shape != (d_inner,):
        raise ValueError(f"D must have shape ({d_inner},), got {tuple(D.shape)}.")
    if delta_bias is not None and delta_bias.shape != (d_inner,):
        raise ValueError(f"delta_bias must have shape ({d_inner},), got {tuple(delta_bias.shape)}.")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have the shape of u {tuple(u.shape)}, got {tuple(z.shape)}.")
    # Like mamba-ssm's reference, the recurrence runs in float32 (float64 stays float64).
    dtype = torch.promote_types(u.dtype, torch.float32)
    u, delta, A, B, C = (tensor.to(dtype) for tensor in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    time_major = (delta.permute(2, 0, 1), (delta * u).permute(2, 0, 1), B.permute(2, 0, 1), C.permute(2, 0, 1))
    return u, *(tensor.contiguous() for tensor in time_major), A


def _finish_scan(y, u, D, z, dtype_in):
    """``(L, batch, d_inner)`` read-out -> ``(batch, d_inner, L)``, ``+ D u``, gated by ``silu(z)``, input dtype."""
    y = y.permute(1, 2, 0)
    if D is not None:
        y = y + D.to(y.dtype)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(dtype_in)


def selective_scan_sequential(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """The selective scan as a plain loop over time (the semantics of mamba-ssm's ``selective_scan_ref``).

    ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t`` from ``h_0 = 0``, ``y_t = C_t . h_t + D u_t``,
    then ``y * silu(z)``; every channel ``d`` of ``u`` has its own ``d_state``-dimensional state.

    Parameters
    ----------
    u
        ``(batch, d_inner, L)`` input sequence.
    delta
        ``(batch, d_inner, L)`` step sizes (before ``delta_bias`` and softplus).
    A
        ``(d_inner, d_state)`` state matrix (diagonal per channel; negative for a decaying state).
    B, C
        ``(batch, d_state, L)`` input-dependent input and output matrices.
    D
        ``(d_inner,)`` skip connection, or ``None``.
    z
        ``(batch, d_inner, L)`` gate, or ``None``.
    delta_bias
        ``(d_inner,)`` added to ``delta`` first, or ``None``.
    delta_softplus
        Apply softplus to ``delta`` (after the bias).

    Returns
    -------
    ``(batch, d_inner, L)`` in the dtype of ``u`` (computed in at least float32).

    Notes
    -----
    Each step builds only its own ``(batch, d_inner, d_state)`` tensors and reads the output out
    at once, so no ``(batch, d_inner, L, d_state)`` tensor is ever formed: the least work and
    memory of any formulation, and the fastest on CPU.
    """
    dtype_in = u.dtype
    u, delta, delta_u, B, C, A = _prepare_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    state, outputs = None, []
    for t in range(delta.shape[0]):
        drive = delta_u[t][..., None] * B[t][:, None, :]  # (batch, d_inner, d_state)
        state = drive if state is None else torch.addcmul(drive, torch.exp(delta[t][..., None] * A), state)
        outputs.append(torch.bmm(state, C[t][..., None]).squeeze(-1))  # (batch, d_inner)
    return _finish_scan(torch.stack(outputs), u, D, z, dtype_in)


def selective_scan_parallel(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """The selective scan of :func:`selective_scan_sequential` as a parallel (associative) scan over time.

    Same arguments, same result (to float rounding), in ``ceil(log2 L)`` whole-tensor steps.

    Notes
    -----
    The recurrence ``h_t = a_t h_{t-1} + b_t`` composes pairs ``(a, b)`` associatively:
    ``(a1, b1) then (a2, b2) = (a2 a1, a2 b1 + b2)``. A Hillis-Steele doubling scan applies this
    with offsets 1, 2, 4, ...: after the step with offset ``k`` every position holds the
    composition of the last ``2k`` steps, so ``ceil(log2 L)`` steps give every prefix.
    It was chosen over the log-space form ``h_t = sum_k exp(S_t - S_k) b_k`` with
    ``S = cumsum(delta A)`` because that form either overflows (``exp(-S_k)`` grows without bound
    in float32 once ``sum |delta A|`` passes ~88) or needs ``O(L^2)`` memory for the pairwise
    differences; the doubling scan only multiplies decay factors ``exp(delta A)`` (in ``(0, 1]`` for
    a negative ``A``), the same products the sequential loop forms, so it is as stable as the loop
    for any ``L``. It needs no in-place writes, so autograd differentiates it directly.

    Its price is ``O(L log L)`` work on ``(L, batch, d_inner, d_state)`` tensors against the
    loop's ``O(L)``: it pays where per-step launches dominate (a GPU without mamba-ssm, long
    sequences) and loses on CPU, where :class:`Mamba` therefore runs the loop.
    """
    dtype_in = u.dtype
    u, delta, delta_u, B, C, A = _prepare_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    length, batch = delta.shape[:2]
    decay = torch.exp(delta[..., None] * A)  # (L, batch, d_inner, d_state): a_t = exp(delta_t A)
    state = delta_u[..., None] * B[:, :, None, :]  # (L, batch, d_inner, d_state): b_t = delta_t B_t u_t
    offset = 1
    while offset < length:
        # Position t takes in the composition ending at t - offset; the first `offset` are already complete.
        state = torch.cat([state[:offset], torch.addcmul(state[offset:], decay[offset:], state[:-offset])])
        if 2 * offset < length:  # the last step needs no decay products
            decay = torch.cat([decay[:offset], decay[offset:] * decay[:-offset]])
        offset *= 2
    # y_t = C_t . h_t for all (t, batch) at once: one batched matrix-vector product.
    y = torch.bmm(state.flatten(0, 1), C.flatten(0, 1)[..., None]).view(length, batch, -1)
    return _finish_scan(y, u, D, z, dtype_in)


class Mamba(nn.Module):
    """A Mamba-1 block: gated selective state-space layer over a sequence (``mamba_ssm.Mamba``'s math).

    ``in_proj`` splits each token into a branch ``x`` and a gate ``z``; ``x`` passes a causal
    depthwise convolution and SiLU, then the selective scan with input-dependent step ``dt``
    and matrices ``B``, ``C`` (all three projected from ``x``); the result, gated by ``silu(z)``,
    is projected back by ``out_proj``. Every output token depends on its own and earlier tokens only.
    The scan runs in mamba-ssm's CUDA kernel where it can, else in pure PyTorch (see ``_scan_for``).

    Parameter names, shapes and initialisation follow mamba-ssm, so ``load_state_dict`` works
    both ways; the arguments keep its names and defaults.

    Parameters
    ----------
    d_model
        Token size.
    d_state
        State size per inner channel.
    d_conv
        Width of the causal depthwise convolution.
    expand
        ``d_inner = int(expand * d_model)``.
    dt_rank
        Rank of the ``dt`` projection; ``"auto"`` is ``ceil(d_model / 16)``.
    dt_min, dt_max
        Range of the initial step sizes ``softplus(dt_proj.bias)`` (log-uniform).
    dt_init
        ``"random"`` (uniform) or ``"constant"`` initial ``dt_proj.weight`` of scale ``dt_scale / sqrt(dt_rank)``.
    dt_scale
        Scale of the initial ``dt_proj.weight``.
    dt_init_floor
        Lower clamp of the initial step sizes.
    conv_bias
        Give the convolution a bias.
    bias
        Give ``in_proj`` and ``out_proj`` biases.

    Examples
    --------
    >>> block = Mamba(d_model=16)
    >>> block(torch.randn(2, 5, 16)).shape
    torch.Size([2, 5, 16])
    >>> block.A_log.shape, block.x_proj.weight.shape
    (torch.Size([32, 16]), torch.Size([33, 32]))
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int | float = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
    ):
        super().__init__()
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        if not isinstance(dt_rank, int) or isinstance(dt_rank, bool):
            raise TypeError(f"dt_rank must be a positive int or 'auto', got {dt_rank!r}.")
        d_inner = int(expand * d_model)
        if min(d_model, d_state, d_conv, d_inner, dt_rank) < 1:
            raise ValueError(
                f"Mamba needs positive sizes, got {d_model=}, {d_state=}, {d_conv=}, {expand=} (d_inner={d_inner}), "
                f"{dt_rank=}."
            )
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}.")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"Mamba needs 0 < dt_min <= dt_max, got {dt_min=}, {dt_max=}.")
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner, self.dt_rank = d_inner, dt_rank

        # Registered in mamba-ssm's order, so that state dicts list the same keys in the same order.
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)

        # dt_proj: weights that keep the variance of dt, and a bias that puts the initial step sizes
        # softplus(bias) log-uniformly in [dt_min, dt_max].
        dt_init_std = dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
        self.dt_proj.bias._no_reinit = True  # mamba-ssm's marker: generic bias re-initialisations skip it

        # S4D-real initialisation A = -(1, 2, ..., d_state) for every channel, stored as log(-A).
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(d_inner))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(B, L, d_model)`` -> ``(B, L, d_model)``, causal along ``L``."""
        if hidden_states.dim() != 3 or hidden_states.shape[2] != self.d_model:
            raise ValueError(
                f"Mamba expects hidden_states of shape (B, L, {self.d_model}), got {tuple(hidden_states.shape)}."
            )
        length = hidden_states.shape[1]
        x, z = self.in_proj(hidden_states).transpose(1, 2).chunk(2, dim=1)  # each (B, d_inner, L)
        x = F.silu(self.conv1d(x)[..., :length])  # causal: the padding's right overhang is cut off
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # (B, d_inner, L); the bias goes into the scan
        B, C = B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()  # each (B, d_state, L)
        A = -torch.exp(self.A_log.float())  # (d_inner, d_state)
        scan = self._scan_for(x)
        y = scan(x, dt, A, B, C, self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        return self.out_proj(y.transpose(1, 2))  # (B, L, d_model)

    @staticmethod
    def _scan_for(x: torch.Tensor) -> Callable:
        """mamba-ssm's fused kernel for CUDA tensors when it imports, else a pure-PyTorch scan.

        On CPU the loop: it does ``O(L)`` work against the doubling scan's ``O(L log L)`` on 4-d
        tensors, and measured 2-5x faster (forward + backward, 1 thread, ``L`` = 5 and 20). On a
        GPU without mamba-ssm the parallel scan: ``log2 L`` launches instead of ``L``.
        """
        if not x.is_cuda:
            return selective_scan_sequential
        kernel, reason = _load_selective_scan_kernel()
        if kernel is None:
            warnings.warn(f"Mamba runs its pure-PyTorch scan on CUDA (slower): {reason}", stacklevel=3)
            return selective_scan_parallel
        return kernel
