"""Batched, per-sequence seeded token sampling (temperature, top-k, top-p) without per-row work.

The random stream
-----------------
Each sequence has a 63-bit seed; the random numbers of its ``position``-th token are a
counter-based hash of ``(seed, position, level, index)``: splitmix64's mixer over int64 tensors
(``key + (index + 1) * golden_gamma``, wrapping arithmetic), 52 bits -> a float64 ``u`` in (0, 1).
It is integer arithmetic done for all rows at once: the same on every machine, process, device
and batch, with no generator objects. Unseeded sampling takes its keys from torch's global
generator instead (:func:`random_keys`).

The draw: a two-level exponential race
--------------------------------------
With ``w_t = exp((logit_t - max) / T)`` on the kept tokens (0 elsewhere), token ``t`` wins the
race ``argmin_t E_t / w_t`` with ``E_t = -log u_t`` (unit exponentials); the winner is distributed
as ``w_t / sum(w)`` (Gumbel-max in another form). Over the whole vocabulary it runs in two levels:
blocks of 128 tokens race with their summed weights ``W_b`` (level "block", one ``E`` per block),
then the tokens of the winning block race (level "token", one ``E`` per token of that block):
``P(t) = W_b / sum(W) * w_t / W_b``, exact, with ``V / 128 + 128`` random numbers per row instead
of ``V``. A race, unlike an inverse CDF, only compares per-token values: a tiny change in the
logits (another batch size gives other float rounding in the model) changes the sampled token only
when two race times are that close, so samples are independent of the batch in practice.

The kept set
------------
- top-k (``0 < top_k < vocab``): exactly the ``top_k`` largest logits (``torch.topk``; ties at the
  k-th value are broken by its order); the race runs over those ``k`` tokens only.
- top-p (``top_p < 1``, after top-k when both are set): a token is kept when the probability of
  the tokens with a strictly larger logit is ``<= top_p`` (the smallest set of top tokens whose
  mass reaches ``top_p``; as the usual sort-based rule except that tokens tied with the last kept
  one are all kept). The most likely token is always kept. Membership is decided on float32
  weights, so a logit within rounding of the boundary may fall either side.

How top-p draws without top-k: by rejection. A draw from the whole distribution (the same race
as without top-p, on the step's own stream) is kept when the drawn token is in the nucleus; else
the row draws again on a fresh stream, up to 3 times (each succeeds with probability >= top_p);
a row still rejected then finds its nucleus boundary explicitly (the top 64 logits when the
nucleus fits in them, else a weighted histogram of the logits: no sort of the vocabulary), zeroes
the weights below it and races once more. Conditioned on acceptance a draw is from the nucleus,
so the result is exact; with top-k the nucleus is found among the ``k`` candidates directly.

Cost per step, for a ``B x V`` logits tensor: with top-k, ``torch.topk`` then work on ``B x k``
(plus one log-sum-exp pass when log-probs are recorded); otherwise a few elementwise passes over
``B x V`` (max, exp, block sums), and three more per top-p attempt.

History: until issue 22 every row seeded its own ``torch.Generator`` with ``mix_seed(seed,
position)`` and took a Gumbel-max over a full-vocabulary uniform vector, after a full sort for
top-p. The random stream changed, so the same seed now gives different (equally distributed)
samples than runs made before that change.
"""

from __future__ import annotations

import torch

_GOLDEN_GAMMA = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_KEY_SALT = 0x5D2B0C6A3E8F1947
LEVEL_BLOCK = 0x2545F4914F6CDD1D  # salts of the two race levels
LEVEL_TOKEN = 0x3C6EF372FE94F82B
_BLOCK = 128  # tokens per block of the two-level race
_HIST_BINS = 2048  # bins of the weighted logit histogram that locates the top-p boundary
FAST_TOP_P_CANDIDATES = 64  # top-p tries the nucleus among this many top tokens when it can fit
_BELOW_ONE = 1.0 - 2.0**-24  # the float32 just below 1
REJECTION_ATTEMPTS = 3  # top-p without top-k: draws from the whole distribution before the explicit nucleus
_ATTEMPT_SALT = 0x632BE59BD9B4E019


def _i64(value: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def _shr(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (``>>`` on int64 is arithmetic)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finalizer on int64 tensors (wrapping arithmetic; the bits of the uint64 result)."""
    z = (z ^ _shr(z, 30)) * _i64(_MIX1)
    z = (z ^ _shr(z, 27)) * _i64(_MIX2)
    return z ^ _shr(z, 31)


def stream_keys(seeds, device: torch.device | str | None = None) -> torch.Tensor:
    """The per-sequence keys of the random stream (int64 [B]), from integer seeds in [0, 2**64)."""
    seeds = torch.as_tensor([_i64(int(s)) for s in seeds], dtype=torch.int64, device=device)
    return splitmix64(seeds ^ _i64(_KEY_SALT))


def random_keys(rows: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Keys from torch's global generator (unseeded sampling)."""
    return torch.randint(-(2**63), 2**63 - 1, (rows,), dtype=torch.int64, device=device)


def step_keys(keys: torch.Tensor, position: int) -> torch.Tensor:
    """The keys of one position of each sequence's stream (int64 [B])."""
    return splitmix64(keys + _i64((position + 1) * _GOLDEN_GAMMA))


def stream_uniforms(step: torch.Tensor, level: int, index: torch.Tensor) -> torch.Tensor:
    """Uniforms in the open interval (0, 1) for ``index`` [B, n] (or [n]) at one step and level:
    ``(2 b + 1) / 2**53`` for 52 random bits ``b`` (float64, exact; never 0 or 1)."""
    key = splitmix64(step ^ _i64(level))[:, None]
    bits = _shr(splitmix64(key + (index + 1) * _i64(_GOLDEN_GAMMA)), 12)
    return (2 * bits + 1).to(torch.float64) * (2.0**-53)


def race(weights: torch.Tensor, step: torch.Tensor, level: int, index: torch.Tensor) -> torch.Tensor:
    """Per row, the position of the winner of ``argmin E / weights`` (exponential race), with
    ``E = -log u > 0`` from the stream at ``index``: a zero weight gives ``+inf`` and never wins."""
    exponential = stream_uniforms(step, level, index).log_().neg_()
    return (exponential / weights.to(torch.float64)).argmin(-1)


class Workspace:
    """Scratch memory reused from one call of :func:`sample_tokens` to the next.

    A fresh ``B x V`` tensor per pass costs page faults on CPU (the allocator hands large blocks
    back to the system), which took longer than the arithmetic in measurements; a generator keeps
    one workspace for all its decode steps. Buffers grow to the largest size asked for and are
    handed out as views of their first elements.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        numel = 1
        for size in shape:
            numel *= size
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < numel or buffer.dtype != dtype or buffer.device != torch.device(device):
            buffer = torch.empty(numel, dtype=dtype, device=device)
            self._buffers[name] = buffer
        return buffer[:numel].view(shape)


def _padded(vocab: int) -> int:
    return -(-vocab // _BLOCK) * _BLOCK


def _exp_weights(logits: torch.Tensor, row_max: torch.Tensor, temperature: float, ws: Workspace) -> torch.Tensor:
    """``exp((logits - row_max) / T)`` in float32, zero-padded to whole blocks: [B, blocks x 128]."""
    rows, vocab = logits.shape
    grid = ws.get("weights", (rows, _padded(vocab)), torch.float32, logits.device)
    body = grid[:, :vocab]
    torch.add(row_max * (-1.0 / temperature), logits, alpha=1.0 / temperature, out=body)  # one pass
    body.exp_()
    grid[:, vocab:] = 0.0
    return grid


def _block_mass(grid: torch.Tensor) -> torch.Tensor:
    """Float64 sums of each block of 128 weights (summed in float32 inside a block)."""
    return grid.view(grid.shape[0], -1, _BLOCK).sum(-1).to(torch.float64)


def _race_vocabulary(grid: torch.Tensor, step: torch.Tensor, block_mass: torch.Tensor | None = None) -> torch.Tensor:
    """Token ids drawn by the two-level race over the weights of ``_exp_weights`` [B, blocks x 128]."""
    rows = grid.shape[0]
    blocks = grid.view(rows, -1, _BLOCK)
    if block_mass is None:
        block_mass = _block_mass(grid)
    block = race(block_mass, step, LEVEL_BLOCK, torch.arange(blocks.shape[1], device=grid.device))
    ids = block[:, None] * _BLOCK + torch.arange(_BLOCK, device=grid.device)
    inner = race(blocks[torch.arange(rows, device=grid.device), block], step, LEVEL_TOKEN, ids)
    return ids.gather(-1, inner[:, None]).squeeze(1)


def _drop_below(grid: torch.Tensor, floor: torch.Tensor) -> None:
    """Zero the weights of each row below ``floor`` [B, 1] (a weight of that row), in place.

    The row is divided by its floor, so the floor becomes exactly 1, and one scalar threshold
    keeps the weights >= 1 (the rescaling is harmless: a draw only sees ratios of weights). Two
    vectorized passes, where a boolean mask and ``masked_fill_`` take several times longer on CPU.
    """
    grid.div_(floor.clamp(min=1e-30))  # a kept weight is never that small (the mass below it would exceed 1 - top_p)
    torch.nn.functional.threshold(grid, _BELOW_ONE, 0.0, inplace=True)  # keeps x > 1 - 2**-24, i.e. x >= 1


def _nucleus_size(sorted_weights: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    """How many of the descending ``sorted_weights`` (float64) the top-p rule keeps: those whose
    exclusive cumulative weight is ``<= budget`` (budget = top_p x the total weight)."""
    exclusive = sorted_weights.cumsum(-1) - sorted_weights
    return (exclusive <= budget[:, None]).sum(-1).clamp(min=1)


def _bin_members(bins: torch.Tensor, which: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) of the entries of ``bins`` [B, blocks x 128] (float, whole numbers) equal to
    ``which`` [B], grouped by row: blocks without one are skipped by a block-wise minimum.
    Overwrites ``bins`` with the distances to ``which``."""
    rows = bins.shape[0]
    distance = bins.sub_(which[:, None].to(bins.dtype)).abs_()
    blocks = distance.view(rows, -1, _BLOCK)
    block_row, block = (blocks.amin(-1) == 0).nonzero(as_tuple=True)
    member, offset = (blocks[block_row, block] == 0).nonzero(as_tuple=True)
    return block_row[member], block[member] * _BLOCK + offset


def _top_p_boundary(logits: torch.Tensor, weights: torch.Tensor, row_max: torch.Tensor, total: torch.Tensor,
                    top_p: float, temperature: float, fast_candidates: int, ws: Workspace) -> torch.Tensor:
    """A token with the smallest kept logit of each row under the top-p rule over the whole vocabulary.

    ``weights = exp((logits - row_max) / T)`` (float32, [B, V]) and ``total`` its row sums
    (float64). Rows whose nucleus fits in their ``fast_candidates`` largest logits (a peaked
    distribution) are resolved from those; the others by a weighted histogram of the logits.
    Either way gives the same token (up to float rounding of the masses).
    """
    rows, vocab = logits.shape
    budget = top_p * total
    boundary = torch.zeros(rows, dtype=torch.int64, device=logits.device)
    pending = torch.arange(rows, device=logits.device)
    k = min(fast_candidates, vocab)
    if k > 0:
        # the nucleus has at least top_p x total tokens (no weight exceeds the top one's, 1)
        eligible = pending if k == vocab else (budget < k).nonzero().squeeze(1)
        if eligible.numel():
            sub = eligible if eligible.numel() < rows else slice(None)
            values, ids = logits[sub].topk(k, dim=-1)
            top = _scaled(values, row_max[sub], temperature)
            # token k+1 is past the nucleus when the k largest weigh more than the budget
            fits = torch.ones_like(eligible, dtype=torch.bool) if k == vocab else top.sum(-1) > budget[sub]
            keep = _nucleus_size(top, budget[sub])
            boundary[eligible] = ids.gather(-1, (keep - 1)[:, None]).squeeze(1)
            resolved = torch.zeros(rows, dtype=torch.bool, device=logits.device)
            resolved[eligible[fits]] = True
            pending = (~resolved).nonzero().squeeze(1)
    if pending.numel():
        sub = pending if pending.numel() < rows else slice(None)
        boundary[pending] = _histogram_boundary(logits[sub], weights[sub], row_max[sub], budget[sub], temperature, ws)
    return boundary


def _scaled(values: torch.Tensor, row_max: torch.Tensor, temperature: float) -> torch.Tensor:
    """``exp((values - row_max) / T)`` in float64."""
    return ((values.to(torch.float64) - row_max.to(torch.float64)) / temperature).exp()


def _histogram_boundary(logits: torch.Tensor, weights: torch.Tensor, row_max: torch.Tensor, budget: torch.Tensor,
                        temperature: float, ws: Workspace) -> torch.Tensor:
    """The top-p boundary token of each row from a weighted histogram of its logits: the bin that
    holds the boundary is found from the bin masses, then only that bin's logits are sorted."""
    rows, vocab = logits.shape
    # bins linear in the logit between the row's minimum (or max - 80 T: lower weights vanish in
    # float32) and its maximum; a higher bin holds only strictly larger logits
    top_logit = row_max.squeeze(1)
    low = torch.maximum(logits.amin(-1), top_logit - 80.0 * temperature)
    span = top_logit - low
    scale = torch.where(span > 0, _HIST_BINS / span, 0.0)[:, None]  # a constant row: one bin
    grid = ws.get("bins", (rows, _padded(vocab)), torch.float32, logits.device)
    binned = grid[:, :vocab]
    # two IEEE operations (no fused multiply-add), so every element is binned by the same monotone map
    torch.sub(logits, low[:, None], out=binned).mul_(scale)
    binned.clamp_(0, _HIST_BINS - 1).floor_()
    grid[:, vocab:] = -1.0  # in no bin
    index = ws.get("bin_index", (rows, vocab), torch.int64, logits.device)
    index.copy_(binned)
    # float32 bin masses (each sums ~V / bins weights: relative error ~1e-7), float64 across bins
    hist = torch.zeros(rows, _HIST_BINS, dtype=torch.float32, device=logits.device).scatter_add_(1, index, weights)
    suffix = hist.to(torch.float64).flip(-1).cumsum(-1).flip(-1)
    above = torch.cat([suffix[:, 1:], suffix.new_zeros(rows, 1)], dim=-1)  # weight of the higher bins
    # the boundary bin: the lowest whose upper neighbours weigh <= budget (it is never empty)
    boundary = (above <= budget[:, None]).to(torch.int8).argmax(-1)
    row, col = _bin_members(grid, boundary)
    counts = torch.bincount(row, minlength=rows)
    slot = torch.arange(row.shape[0], device=logits.device) - (counts.cumsum(0) - counts)[row]
    width = int(counts.max())
    values = logits.new_full((rows, width), float("-inf"))
    values[row, slot] = logits[row, col]
    ids = torch.zeros(rows, width, dtype=torch.int64, device=logits.device)
    ids[row, slot] = col
    values, order = values.sort(dim=-1, descending=True)
    start = above.gather(-1, boundary[:, None]).squeeze(1)
    keep = _nucleus_size(_scaled(values, row_max, temperature), budget - start)
    return ids.gather(-1, order.gather(-1, (keep - 1)[:, None])).squeeze(1)


def _attempt_keys(step: torch.Tensor, attempt: int) -> torch.Tensor:
    """The stream of the ``attempt``-th draw of a step (the first is the step's own)."""
    return step if attempt == 0 else splitmix64(step ^ _i64(attempt * _ATTEMPT_SALT))


def _weight_above(grid: torch.Tensor, chosen: torch.Tensor, ws: Workspace) -> torch.Tensor:
    """Per row, the total weight strictly above ``chosen`` [B, 1] (a weight of the row), float64.

    The row divided by ``chosen`` and thresholded at 1 keeps exactly the larger weights; its sum,
    times ``chosen``, is theirs (three vectorized passes, no boolean mask).
    """
    ratio = ws.get("ratio", tuple(grid.shape), torch.float32, grid.device)
    torch.div(grid, chosen, out=ratio)
    torch.nn.functional.threshold(ratio, 1.0, 0.0, inplace=True)  # keeps x > 1
    return _block_mass(ratio).sum(-1) * chosen.squeeze(1).to(torch.float64)


def _sample_nucleus(logits: torch.Tensor, grid: torch.Tensor, block_mass: torch.Tensor, row_max: torch.Tensor,
                    total: torch.Tensor, step: torch.Tensor, temperature: float, top_p: float, attempts: int,
                    fast_candidates: int, ws: Workspace) -> torch.Tensor:
    """Top-p draws over the whole vocabulary: by rejection, then (rarely) from the explicit nucleus.

    An attempt races over the whole distribution (the draw without top-p) and is accepted when the
    drawn token is in the nucleus: when the weight of the strictly larger logits is <= top_p x the
    total. Conditioned on acceptance it is a draw from the nucleus; each attempt has its own stream
    and succeeds with probability >= top_p. Rows still rejected after ``attempts`` find their
    nucleus boundary (``_top_p_boundary``), zero the weights below it and race once more. Either
    way the token follows the renormalized nucleus distribution exactly, and depends only on the
    row.
    """
    rows, vocab = logits.shape
    budget = top_p * total
    tokens = torch.empty(rows, dtype=torch.int64, device=logits.device)
    pending = torch.arange(rows, device=logits.device)
    for attempt in range(attempts):
        everything = pending.numel() == rows
        sub_grid = grid if everything else grid[pending]
        sub_mass = block_mass if everything else block_mass[pending]
        drawn = _race_vocabulary(sub_grid, _attempt_keys(step[pending], attempt), sub_mass)
        above = _weight_above(sub_grid, sub_grid.gather(1, drawn[:, None]), ws)
        accepted = above <= budget[pending]
        tokens[pending[accepted]] = drawn[accepted]
        pending = pending[~accepted]
        if not pending.numel():
            return tokens
    everything = pending.numel() == rows
    sub_grid = grid if everything else grid[pending]
    sub_logits = logits if everything else logits[pending]
    weights = sub_grid[:, :vocab]
    boundary = _top_p_boundary(sub_logits, weights, row_max[pending], total[pending], top_p, temperature,
                               fast_candidates, ws)
    _drop_below(sub_grid, weights.gather(-1, boundary[:, None]))
    tokens[pending] = _race_vocabulary(sub_grid, _attempt_keys(step[pending], attempts))
    return tokens


def sample_tokens(logits: torch.Tensor, step: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, return_logprobs: bool = False, workspace: Workspace | None = None,
                  attempts: int = REJECTION_ATTEMPTS,
                  fast_candidates: int = FAST_TOP_P_CANDIDATES) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Draw one token per row of ``logits`` [B, V] from the stream of ``step`` [B] (see the module doc).

    ``step`` holds each row's key for this position (:func:`step_keys`). Returns ``(tokens [B]
    int64, logprobs [B] float32 or None)``; the log-probs (with ``return_logprobs``) are
    ``log_softmax(logits / T)`` of the chosen tokens over the whole vocabulary, without top-k/top-p
    renormalization (what the trainer's importance ratio compares with). ``workspace`` keeps
    scratch memory between calls. ``attempts`` (rejection draws before the explicit nucleus) and
    ``fast_candidates`` (how the explicit nucleus is searched) change how top-p without top-k
    draws, not the distribution.
    """
    ws = workspace if workspace is not None else Workspace()
    logits = logits.float()
    rows, vocab = logits.shape
    step = step.to(device=logits.device, dtype=torch.int64)
    if 0 < top_k < vocab:
        values, ids = logits.topk(top_k, dim=-1)  # sorted, descending
        row_max = values[:, :1]
        weights = ((values.to(torch.float64) - row_max) / temperature).exp()
        if top_p < 1.0:
            keep = _nucleus_size(weights, top_p * weights.sum(-1))
            threshold = values.gather(-1, (keep - 1)[:, None])
            weights = weights.masked_fill(values < threshold, 0.0)
        tokens = ids.gather(-1, race(weights, step, LEVEL_TOKEN, ids)[:, None]).squeeze(1)
        if not return_logprobs:
            return tokens, None
        total = _block_mass(_exp_weights(logits, row_max, temperature, ws)).sum(-1)
    else:
        row_max = logits.amax(-1, keepdim=True)
        grid = _exp_weights(logits, row_max, temperature, ws)
        block_mass = _block_mass(grid)
        total = block_mass.sum(-1)
        if top_p < 1.0:
            tokens = _sample_nucleus(logits, grid, block_mass, row_max, total, step, temperature, top_p, attempts,
                                     fast_candidates, ws)
        else:
            tokens = _race_vocabulary(grid, step, block_mass)
        if not return_logprobs:
            return tokens, None
    chosen = logits.gather(-1, tokens[:, None]).squeeze(1)
    return tokens, ((chosen - row_max.squeeze(1)) / temperature - total.log()).float()
