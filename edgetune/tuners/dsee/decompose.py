"""Low-rank + sparse decomposition of a pretrained weight, W ~ L + S (rank(L) <= r, |supp(S)| = N).

DSEE (Chen et al., ACL 2023) takes the sparse residual's positions from such a
decomposition, computed with GreBsmo (Zhou & Tao, AISTATS 2013; greedy
bilateral smoothing). We use the plain alternating form of the same problem,

    min ||W - L - S||_F   s.t.  rank(L) <= r,  ||S||_0 <= N,

solved by a few rounds of: L = best rank-r approximation of W - S (truncated
SVD), S = the N largest-magnitude entries of W - L (hard thresholding). Each
round cannot increase the residual. The N positions of the final S are
where W departs most from its dominant low-rank structure; DSEE trains a
sparse update exactly there.

The SVD is exact (``torch.linalg.svd``) for matrices up to 2048 on a side, and
randomized (``torch.svd_lowrank``, under a fixed seed on a forked RNG, so the
caller's random stream is untouched) above.
"""

from __future__ import annotations

import torch

EXACT_SVD_MAX = 2048


def rank_r(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    """The best rank-``rank`` approximation of ``matrix`` (Eckart-Young)."""
    if min(matrix.shape) <= EXACT_SVD_MAX:
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        return (u[:, :rank] * s[:rank]) @ vh[:rank]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        u, s, v = torch.svd_lowrank(matrix, q=rank + 8, niter=4)
    return (u[:, :rank] * s[:rank]) @ v[:, :rank].T


def top_n(matrix: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of the ``n`` largest-magnitude entries (sorted) and the matrix keeping only those."""
    flat = matrix.flatten()
    idx = torch.topk(flat.abs(), n).indices.sort().values
    sparse = torch.zeros_like(flat)
    sparse[idx] = flat[idx]
    return idx, sparse.view_as(matrix)


def lowrank_sparse(
    weight: torch.Tensor, rank: int, n: int, iters: int = 3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L, S, flat indices of S's support) with rank(L) <= ``rank`` and exactly ``n`` entries in S."""
    if rank < 1:
        raise ValueError(f"decomposition rank must be >= 1, got {rank}")
    if not 1 <= n <= weight.numel():
        raise ValueError(f"sparse entries N must be in 1..{weight.numel()} for a {tuple(weight.shape)} weight, got {n}")
    if iters < 1:
        raise ValueError(f"decomposition iterations must be >= 1, got {iters}")
    w = weight.detach().float().cpu()
    sparse = torch.zeros_like(w)
    for _ in range(iters):
        low = rank_r(w - sparse, min(rank, min(w.shape)))
        idx, sparse = top_n(w - low, n)
    return low, sparse, idx


def sparse_support(weight: torch.Tensor, rank: int, n: int, iters: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the ``n`` positions DSEE trains in ``weight`` (an (out, in) matrix)."""
    _, _, idx = lowrank_sparse(weight, rank, n, iters)
    cols = weight.shape[1]
    return idx // cols, idx % cols
