"""Do 2-d trajectories cross?  The orbits of an autonomous ODE in the plane never do;
the discrete trajectories of a coarse solver can (Ott et al., 2021)."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["crossing_pairs"]


def _orient(a, b, c):
    return np.sign((b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1])
                   - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0]))


def _cross(a, b, c, d):
    """Segments [a, b] and [c, d] properly intersect (broadcast over leading axes)."""
    return (_orient(a, b, c) * _orient(a, b, d) < 0) & (_orient(c, d, a) * _orient(c, d, b) < 0)


def crossing_pairs(trajectories: torch.Tensor, same_step: bool = True,
                   chunk: int = 512) -> list[tuple[int, int]]:
    """Pairs of trajectories whose polylines properly intersect.

    Parameters
    ----------
    trajectories : torch.Tensor, shape (T, B, 2)
        ``B`` trajectories sampled at ``T`` times; consecutive samples are joined
        by straight segments (for a fixed-step solver: its steps).
    same_step : bool
        Compare only segments of the same time interval ``[t_k, t_{k+1}]``
        (default).  Two steps taken at the same time must not cross for a flow;
        comparing all segments would also count chords of a sampled exact orbit
        that cut corners past a nearby orbit.
    chunk : int
        Segments compared at once when ``same_step=False`` (memory).

    Returns
    -------
    list of (i, j)
        Sorted pairs ``i < j`` of trajectories with at least one proper crossing of
        their segments (touching end points and collinear overlaps do not count).
    """
    traj = torch.as_tensor(trajectories).detach().cpu().double().numpy()
    if traj.ndim != 3 or traj.shape[2] != 2 or traj.shape[0] < 2:
        raise ValueError(f"trajectories must have shape (T >= 2, B, 2), got {traj.shape}")
    T, B, _ = traj.shape
    if same_step:   # (T-1, B, 1) against (T-1, 1, B): each step with itself
        a, b = traj[:-1, :, None], traj[1:, :, None]
        c, d = traj[:-1, None], traj[1:, None]
        hit = _cross(a, b, c, d).any(axis=0)
        i, j = np.nonzero(np.triu(hit | hit.T, k=1))
        return sorted(zip(i.tolist(), j.tolist()))
    p = traj[:-1].reshape(-1, 2)          # segment starts, (S, 2), S = (T-1) B
    q = traj[1:].reshape(-1, 2)
    owner = np.tile(np.arange(B), T - 1)
    pairs = set()
    for s in range(0, len(p), chunk):
        a, b, o = p[s:s + chunk, None], q[s:s + chunk, None], owner[s:s + chunk, None]
        c, d = p[None], q[None]
        hit = _cross(a, b, c, d) & (o < owner[None])
        i, j = np.nonzero(hit)
        pairs.update(zip(o[i, 0].tolist(), owner[j].tolist()))
    return sorted(pairs)
