"""Relation-network inference, shared by training validation and the relation scorer.

The seed method ran two ResNets on every (real, generated) pair (CEUR-WS
Vol-3497 paper 116, run 1). Here each image's feature map is computed once
and only the relation head (Sung et al. 2018, "Learning to Compare") runs per
pair: `relation_logits` takes query feature maps, a support source and the
(Q, K) rows of each query's supports, and returns the pair logits;
`pooled_logits` turns each query's K pair logits into one membership logit.
`fingerprint.training.loop.evaluate` (validation, on live feature maps) and
`relation_scores` (the scorer, on exported float16 maps) both go through
these two functions, so validation measures what the scorer computes.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import numpy as np
import torch

from fingerprint.core.errors import FingerprintError
from fingerprint.embedding.features import ArrayGallery, Features, Gallery
from fingerprint.embedding.index import neighbours, resolve_index
from fingerprint.embedding.models import FingerprintModel, preserved_modes
from fingerprint.evaluation.scorefiles import ScoreResult

#: a support source: (N,C,h,w) maps indexed by rows, or a function rows (Q,K) -> maps (Q,K,C,h,w) (tensor or array)
Supports = np.ndarray | torch.Tensor | Callable[[np.ndarray], torch.Tensor]


def _param(model: torch.nn.Module) -> torch.nn.Parameter:
    return next(model.parameters())


def _tensor(x: np.ndarray | torch.Tensor, like: torch.nn.Parameter) -> torch.Tensor:
    """`x` on the model's device in the model's dtype (exported maps are float16)."""
    x = torch.from_numpy(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    return x.to(like.device, like.dtype)


def _take(supports: Supports, rows: np.ndarray, like: torch.nn.Parameter) -> torch.Tensor:
    if callable(supports):
        got = supports(rows)
        return got if isinstance(got, torch.Tensor) else _tensor(got, like)
    if isinstance(supports, torch.Tensor):
        return _tensor(supports[torch.as_tensor(rows, device=supports.device)], like)
    return _tensor(supports[rows], like)


def relation_logits(
    model: FingerprintModel,
    q_fmaps: np.ndarray | torch.Tensor,
    supports: Supports,
    rows: np.ndarray,
    *,
    batch_size: int = 64,
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> np.ndarray:
    """Relation logits (Q,K) float32 of each query map (Q,C,h,w) with its supports `rows` (Q,K), batched over queries.

    The model runs in eval mode (its train/eval flags are restored after).
    """
    like = _param(model)
    out = np.empty(rows.shape, dtype=np.float32)
    with torch.no_grad(), preserved_modes(model):
        model.eval()
        for i in range(0, len(rows), batch_size):
            r = rows[i : i + batch_size]
            with autocast():
                q = _tensor(q_fmaps[i : i + batch_size], like)
                out[i : i + batch_size] = model.relate(q, _take(supports, r, like)).float().cpu().numpy()
    return out


def pooled_logits(model: FingerprintModel, pair_logits: np.ndarray) -> np.ndarray:
    """One membership logit per query (Q,) float32 from its K pair logits (the model's pooling)."""
    with torch.no_grad():
        pooled = model.pool(torch.from_numpy(pair_logits).to(_param(model).device))
    return pooled.float().cpu().numpy()


def check_fmaps(model: FingerprintModel, feats: Features | Gallery, what: str) -> None:
    """Refuse features without feature maps, or with maps another model made."""
    channels = feats.channels if isinstance(feats, Gallery) else (None if feats.fmaps is None else feats.fmaps.shape[1])
    if channels is None:
        raise FingerprintError(
            f"score: the {what} features have no feature maps (re-run 'fingerprint embed' with embed.fmaps)"
        )
    if channels != model.channels:
        raise FingerprintError(
            f"score: the {what} feature maps have {channels} channels, the model's relation head wants "
            f"{model.channels} (features from another model?)"
        )


def relation_scores(
    model: FingerprintModel,
    real: Features,
    gen: Features | Gallery,
    index: Any = None,
    *,
    k: int = 16,
    batch_size: int = 64,
    index_keys: list[str] | None = None,
) -> ScoreResult:
    """The trained scorer: relation head on each real image's top-k generated neighbours, pooled.

    `real` is Features with fmaps (its rows are scored, in order); `gen` the
    generated Features with fmaps or a `Gallery` (a features folder's
    generated rows: only the k neighbours' maps of each batch of queries are
    read from disk, so memory does not grow with the generated count).
    `index` is None (exact search) or a faiss index over the gallery's rows
    (or over gen's rows in `index_keys` order). score = sigmoid(pooled logit).
    Components: `nn_sim` (cosine to the nearest generated image) and
    `mean_topk_sim` (mean cosine over the k).
    """
    gallery = gen if isinstance(gen, Gallery) else ArrayGallery.of(gen)
    check_fmaps(model, real, "real")
    check_fmaps(model, gallery, "generated")
    if index_keys is not None:
        index = resolve_index(index, index_keys, gallery.keys_at(np.arange(len(gallery))).tolist())
    sims, rows = neighbours(real.embeddings, gallery, index, k=k)
    logits = relation_logits(model, real.fmaps, gallery.supports(), rows, batch_size=batch_size)
    score = torch.sigmoid(torch.from_numpy(pooled_logits(model, logits))).double().numpy()
    return ScoreResult(
        keys=real.keys.tolist(),
        score=score,
        components={"nn_sim": sims[:, 0].astype(np.float64), "mean_topk_sim": sims.mean(axis=1).astype(np.float64)},
        neighbour_keys=gallery.keys_at(rows),
        neighbour_sims=sims,
        pair_scores=(1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32),
    )
