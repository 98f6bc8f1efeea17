"""Dependency trees, parts and saliency read from DependencyViT's soft dependency masks.

A block's soft dependency mask ``mask`` (B, N, N) (``DependencyViT.forward_dependencies``) holds
the message mass each token sends to each other token: ``mask[b, j, i]`` is what child ``i`` sends
to parent ``j`` (row = receiver, column = sender), summed over heads. The paper reads a tree from
it: every patch's **parent is its strongest receiver**, ``parent[i] = argmax_j mask[j, i]``.

Conventions (every function here keeps them):

* Patches are numbered row-major on the patch grid (``grid_size`` = (H/16, W/16)); trees, parts
  and saliency are on that full grid. For DependencyViT-Lite a block sees only the tokens that
  survived pruning; ``token_index`` (B, N) gives their patch numbers, and patches absent from it
  are *pruned*: parent ``-1``, part ``-1`` (or the nearest kept patch's part, when filled), saliency
  0.
* A **root** is its own parent. Ties in the argmax go to the lowest token position (ascending
  patch number); a patch whose strongest receiver is itself is a root.
* The argmax graph can hold cycles (``i -> j -> i``); each is broken at the member that receives
  the most message mass (ties: lowest patch number), which becomes a root, so the result is
  always a forest.
* **Parts** are subtrees: without ``num_parts``, one part per tree of the forest; with it, the
  forest is cut into that many parts by repeatedly detaching the subtree that splits its part
  most evenly (largest ``min(subtree, rest of its part)``, ties to the lowest patch number); if
  the forest already has more trees, the smallest trees share the last label. Labels are sorted
  by part size, largest first (0).
* **Saliency** is the message mass a patch receives, ``mask.sum(-1)`` (roots and hubs of the tree
  receive the most), divided by its per-image maximum: values in [0, 1].
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["DependencyOutput", "dependency_parents", "dependency_parts", "dependency_saliency",
           "upsample_parts", "upsample_saliency", "tree_edges"]


def _check_mask(mask, token_index, num_patches):
    if not isinstance(mask, torch.Tensor) or mask.dim() != 3 or mask.shape[1] != mask.shape[2]:
        raise ValueError(f"mask must be a (B, N, N) tensor (row = parent, column = child), got "
                         f"{getattr(mask, 'shape', type(mask))}")
    B, N, _ = mask.shape
    if token_index is None:
        token_index = torch.arange(N, device=mask.device).expand(B, N)
        num_patches = N if num_patches is None else num_patches
    elif tuple(token_index.shape) != (B, N):
        raise ValueError(f"token_index must be (B, N) = {(B, N)}, got {tuple(token_index.shape)}")
    if num_patches is None:
        raise ValueError("num_patches (H * W of the patch grid) is needed with token_index")
    if N > num_patches:
        raise ValueError(f"the mask has {N} tokens but the grid only {num_patches} patches")
    return token_index.long(), num_patches


def _break_cycles(parent: List[int], received: List[float]) -> List[int]:
    """Make the functional graph ``parent`` a forest: each cycle's member with the largest
    ``received`` (ties: lowest index) becomes a root."""
    n = len(parent)
    state = [0] * n  # 0 unseen, 1 on the current walk, 2 finished
    for start in range(n):
        path, v = [], start
        while state[v] == 0:
            state[v] = 1
            path.append(v)
            v = parent[v]
        if state[v] == 1:  # the walk closed a cycle starting at v
            cycle = path[path.index(v):]
            root = min(cycle, key=lambda u: (-received[u], u))
            parent[root] = root
        for u in path:
            state[u] = 2
    return parent


@torch.no_grad()
def dependency_parents(mask, token_index=None, num_patches: Optional[int] = None):
    """The dependency forest: ``(B, num_patches)`` long tensor, the parent patch of every patch
    (itself for roots, -1 for pruned patches). ``mask`` (B, N, N), row = parent, column = child;
    ``token_index`` (B, N): patch numbers of the mask's tokens (None: all patches, in order)."""
    token_index, num_patches = _check_mask(mask, token_index, num_patches)
    B, N, _ = mask.shape
    local = mask.float().argmax(dim=1).cpu()  # strongest receiver of each child; first max on ties
    received = mask.float().sum(-1).cpu()
    index = token_index.cpu()
    out = torch.full((B, num_patches), -1, dtype=torch.long)
    for b in range(B):
        parent = _break_cycles(local[b].tolist(), received[b].tolist())
        out[b, index[b]] = index[b][torch.tensor(parent, dtype=torch.long)]
    return out.to(mask.device)


def _nearest_head(parents: List[int], heads: set) -> List[int]:
    """For every node, the closest ancestor-or-self in ``heads`` (-1 for pruned nodes)."""
    n = len(parents)
    memo = [-2] * n
    for start in range(n):
        if parents[start] < 0:
            memo[start] = -1
            continue
        path, v = [], start
        while memo[v] == -2 and v not in heads:
            path.append(v)
            v = parents[v]
        head = v if v in heads else memo[v]
        for u in path:
            memo[u] = head
        if start in heads:
            memo[start] = start
    return memo


def _part_labels(parents: List[int], num_parts: Optional[int]) -> List[int]:
    n = len(parents)
    heads = {v for v in range(n) if parents[v] == v}
    if num_parts is not None:
        depth = [0] * n
        for v in range(n):
            u = v
            while parents[u] >= 0 and parents[u] != u:
                u, depth[v] = parents[u], depth[v] + 1
        deepest_first = sorted(range(n), key=lambda u: -depth[u])
        while len(heads) < num_parts:
            owner = _nearest_head(parents, heads)
            part_size = {}
            for v in range(n):
                if owner[v] >= 0:
                    part_size[owner[v]] = part_size.get(owner[v], 0) + 1
            # size of each node's subtree within its part (sizes do not flow up through heads)
            size = [1 if parents[v] >= 0 else 0 for v in range(n)]
            for v in deepest_first:
                p = parents[v]
                if p >= 0 and p != v and v not in heads:
                    size[p] += size[v]
            best, best_key = None, None
            for v in range(n):
                if v in heads or parents[v] < 0:
                    continue
                key = (min(size[v], part_size[owner[v]] - size[v]), -v)
                if best_key is None or key > best_key:
                    best, best_key = v, key
            if best is None or best_key[0] < 1:
                break  # every part is a single patch
            heads.add(best)
    owner = _nearest_head(parents, heads)
    sizes = {}
    for v in range(n):
        if owner[v] >= 0:
            sizes[owner[v]] = sizes.get(owner[v], 0) + 1
    order = sorted(sizes, key=lambda h: (-sizes[h], h))
    rank = {h: i for i, h in enumerate(order)}
    labels = [rank[owner[v]] if owner[v] >= 0 else -1 for v in range(n)]
    if num_parts is not None:
        labels = [min(lab, num_parts - 1) if lab >= 0 else -1 for lab in labels]
    return labels


@torch.no_grad()
def dependency_parts(parents, num_parts: Optional[int] = None):
    """Part labels ``(B, P)`` (long; -1 for pruned patches) from a forest ``parents`` (B, P)
    (:func:`dependency_parents`): subtrees as parts (module docstring)."""
    if num_parts is not None and num_parts < 1:
        raise ValueError(f"num_parts must be at least 1, got {num_parts}")
    rows = [_part_labels(p, num_parts) for p in parents.cpu().tolist()]
    return torch.tensor(rows, dtype=torch.long, device=parents.device).reshape(parents.shape)


@torch.no_grad()
def dependency_saliency(mask, token_index=None, num_patches: Optional[int] = None):
    """Saliency ``(B, num_patches)`` in [0, 1]: received message mass per patch, divided by its
    per-image maximum (0 for pruned patches)."""
    token_index, num_patches = _check_mask(mask, token_index, num_patches)
    received = mask.float().sum(-1).clamp_min(0)
    out = received.new_zeros(mask.shape[0], num_patches)
    out.scatter_(1, token_index, received)
    peak = out.amax(dim=1, keepdim=True)
    return torch.where(peak > 0, out / peak.clamp_min(1e-30), out)


def _fill_pruned(labels, grid_size):
    """Give every pruned patch (-1) the label of its nearest kept patch on the grid (Euclidean;
    ties to the lowest patch number)."""
    H, W = grid_size
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()], 1).float().to(labels.device)
    dist = torch.cdist(coords, coords)  # (P, P)
    out = labels.clone()
    for b in range(labels.shape[0]):
        kept = labels[b] >= 0
        if kept.all() or not kept.any():
            continue
        d = dist[:, kept]
        nearest = d.argmin(dim=1)  # first minimum: the lowest kept patch number
        out[b] = labels[b][kept][nearest]
    return out


def upsample_parts(labels, grid_size: Tuple[int, int], image_size: Tuple[int, int],
                   fill_pruned: bool = True):
    """Part labels (B, P) -> (B, H, W) at image resolution (nearest: each pixel takes its patch's
    label). With ``fill_pruned`` pruned patches take their nearest kept patch's part, so the map
    covers the image; otherwise they stay -1."""
    if fill_pruned:
        labels = _fill_pruned(labels, grid_size)
    grid = labels.reshape(labels.shape[0], 1, *grid_size).float()
    return F.interpolate(grid, size=tuple(image_size), mode="nearest").squeeze(1).long()


def upsample_saliency(saliency, grid_size: Tuple[int, int], image_size: Tuple[int, int]):
    """Saliency (B, P) -> (B, H, W) at image resolution (bilinear, clamped to [0, 1])."""
    grid = saliency.reshape(saliency.shape[0], 1, *grid_size).float()
    return F.interpolate(grid, size=tuple(image_size), mode="bilinear",
                         align_corners=False).squeeze(1).clamp(0, 1)


def tree_edges(parents, mask=None, token_index=None):
    """The edges ``(child, parent, weight)`` of one image's forest (``parents`` (P,)), roots and
    pruned patches left out; ``weight`` is the mask entry of the edge when ``mask`` (N, N) of the
    same image is given (with its ``token_index`` (N,) under pruning), else 1."""
    parents = parents.cpu()
    position = None
    if mask is not None:
        mask = mask.float().cpu()
        idx = torch.arange(mask.shape[0]) if token_index is None else token_index.cpu()
        position = {int(p): k for k, p in enumerate(idx.tolist())}
    edges = []
    for child, parent in enumerate(parents.tolist()):
        if parent < 0 or parent == child:
            continue
        w = 1.
        if position is not None:
            w = float(mask[position[parent], position[child]])
        edges.append((child, parent, w))
    return edges


@dataclass
class DependencyOutput:
    """What :meth:`DependencyViT.forward_dependencies` returns; entry ``k`` of each list belongs
    to block ``layers[k]``. Trees, parts and saliency are read per block (``layer``: a block
    index in ``layers``; -1: the last one recorded)."""
    masks: List[torch.Tensor]            # (B, N_l, N_l), row = parent, column = child
    message_weights: List[torch.Tensor]  # (B, N_l) cumulative message weight m
    head_weights: List[torch.Tensor]     # (B, heads, N_l) head selector p
    token_indices: List[torch.Tensor]    # (B, N_l) patch number of every token
    layers: List[int]
    grid_size: Tuple[int, int]
    patch_size: int
    features: torch.Tensor               # forward_features: (B, C, H/16, W/16)
    logits: Optional[torch.Tensor] = None

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def image_size(self) -> Tuple[int, int]:
        return self.grid_size[0] * self.patch_size, self.grid_size[1] * self.patch_size

    def _entry(self, layer: int) -> int:
        if layer == -1:
            return len(self.layers) - 1
        if layer not in self.layers:
            raise ValueError(f"block {layer} was not recorded; recorded blocks: {self.layers} "
                             "(pass layers= to forward_dependencies)")
        return self.layers.index(layer)

    def tree(self, layer: int = -1):
        """Parent patch of every patch (B, P): itself for roots, -1 for pruned patches."""
        k = self._entry(layer)
        return dependency_parents(self.masks[k], self.token_indices[k], self.num_patches)

    def parts(self, layer: int = -1, num_parts: Optional[int] = None,
              image_size: Optional[Sequence[int]] = None, fill_pruned: bool = True):
        """Part labels: (B, H/16, W/16) on the patch grid (-1: pruned), or (B, H, W) with
        ``image_size`` (covering the image when ``fill_pruned``)."""
        labels = dependency_parts(self.tree(layer), num_parts)
        if image_size is None:
            return labels.reshape(-1, *self.grid_size)
        return upsample_parts(labels, self.grid_size, tuple(image_size), fill_pruned)

    def saliency(self, layer: int = -1, image_size: Optional[Sequence[int]] = None):
        """Saliency in [0, 1]: (B, H/16, W/16), or (B, H, W) with ``image_size``."""
        k = self._entry(layer)
        sal = dependency_saliency(self.masks[k], self.token_indices[k], self.num_patches)
        if image_size is None:
            return sal.reshape(-1, *self.grid_size)
        return upsample_saliency(sal, self.grid_size, tuple(image_size))
