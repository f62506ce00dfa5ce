"""Relation network: ResNet backbone(s), unit-norm embedding, learned pair relation, K-score pooling.

One `FingerprintModel` does three jobs, all through `forward` so that autocast
and DDP cover them:

- embedding mode (`forward(query)`): a unit-norm embedding for FAISS (the L2
  norm is inside the model, so inner product is cosine) and the layer4 feature
  map for the relation module;
- episode mode (`forward(query, support)` or with precomputed support feature
  maps from a memory bank): K relation logits per query, pooled into one
  membership logit.

The embedding is a linear projection of the layer4 map average-pooled to a
small grid (`embed_grid`, default 4x4), not globally pooled: for aligned CT
slices, where things are is much of what makes two images near-copies (the
measured comparison is in docs/design-notes.md).

The "light" relation head is built to be cheap per pair, because the scorer
runs it on many (real, generated) pairs while each image's backbone runs once:
each map is projected to a few channels, and a pair costs a 1x1 conv over
relational features (|q-s|, per-position cosine) plus a small MLP that also
sees the embedding closeness. The "seed" head and stem rebuild the seed's
run-1 network (`seed_config()`), minus its sigmoid-then-softmax defect: heads
output logits.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from fingerprint.core.errors import FingerprintError
from fingerprint.core.vocab import BACKBONES, POOLS, RELATIONS, ROLES

#: grey-level statistics used to normalise [0,1] input (the mean of ImageNet's
#: per-channel mean/std, which is what a summed-RGB conv1 expects).
GRAY_MEAN = 0.449
GRAY_STD = 0.226


@dataclass
class ModelConfig:
    """Architecture of a FingerprintModel (saved in model.json)."""

    backbone: str = "resnet18"  # resnet18|34|50|101
    shared: bool = True  # one backbone for real and generated images (seed: separate)
    relation: str = "light"  # "light" (cheap per pair) | "seed" (seed run-1 head)
    pool: str = "max"  # max | mean | attention (K relation scores -> 1 logit)
    image_size: int = 128
    embed_dim: int = 128  # projection for the unit-norm embedding
    seed_stem: bool = False  # seed's conv1 7x7/2 with no max-pool
    relation_dim: int = 32  # light head: channels each feature map is projected to
    relation_hidden: int = 64  # light head: width of the pair conv and MLP
    embed_grid: int = 4  # the map is average-pooled to this grid and flattened before the projection

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise FingerprintError(f"unknown backbone {self.backbone!r} (choose from {', '.join(BACKBONES)})")
        if self.relation not in RELATIONS:
            raise FingerprintError(f"unknown relation {self.relation!r} (choose from {', '.join(RELATIONS)})")
        if self.pool not in POOLS:
            raise FingerprintError(f"unknown pool {self.pool!r} (choose from {', '.join(POOLS)})")
        for name in ("image_size", "embed_dim", "relation_dim", "relation_hidden", "embed_grid"):
            if int(getattr(self, name)) < 1:
                raise FingerprintError(f"model {name} must be >= 1, got {getattr(self, name)}")
        if self.image_size < 32:
            raise FingerprintError(f"model image_size must be >= 32 (ResNet downsamples 32x), got {self.image_size}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Build from a dict, ignoring unknown keys (so older/newer model.json files load)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def seed_config() -> ModelConfig:
    """The seed's run-1 network: two separate ResNet-101s (7x7/2 stem, no max-pool), seed head, 256x256."""
    return ModelConfig(backbone="resnet101", shared=False, relation="seed", pool="mean", image_size=256, seed_stem=True)


class Backbone(nn.Module):
    """A torchvision ResNet trunk on 1-channel input, returning the unpooled layer4 map."""

    #: stage names in forward order (for freezing a prefix of the trunk)
    STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")

    def __init__(self, name: str, seed_stem: bool):
        super().__init__()
        net = getattr(torchvision.models, name)(weights=None)
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.conv1, self.bn1, self.relu = net.conv1, net.bn1, net.relu
        self.maxpool = nn.Identity() if seed_stem else net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels = net.fc.in_features

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def stage_modules(self, stage: str) -> list[nn.Module]:
        return [self.conv1, self.bn1] if stage == "stem" else [getattr(self, stage)]


class LightRelation(nn.Module):
    """Cheap learned difference function over a (real, generated) pair of feature maps.

    It sees the pair only through symmetric relational features, never either
    map alone: a head that sees the query's own features can learn which
    training images are "used" by their looks (the seed's concatenating head
    can, and with 160 labelled images that is what it learns) instead of how
    close their generated neighbours are. Per image: 1x1 projection C -> r.
    Per pair: |q - s| of the projections and the per-position cosine of the
    raw maps, a 1x1 conv (r+1 -> m), ReLU, mean+max pool, and an MLP that also
    gets the embedding closeness; plus a direct learned term on that
    closeness, the prior that a closer generated neighbour means "used". The
    MLP's last layer starts at zero, so an untrained head ranks pairs by
    closeness alone. Closeness is -log(1 - cosine): embedding cosines sit in a
    narrow band just below 1, and the log spreads it to a usable scale.
    """

    def __init__(self, channels: int, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, kernel_size=1)
        self.pair = nn.Conv2d(dim + 1, hidden, kernel_size=1)
        self.mlp = nn.Sequential(nn.Linear(2 * hidden + 3, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)
        self.close_scale = nn.Parameter(torch.tensor(1.0))
        self.close_bias = nn.Parameter(torch.tensor(4.0))  # cosine ~0.98

    def forward(self, q: Tensor, s: Tensor, cos: Tensor) -> Tensor:
        """q (Q,C,h,w), s (Q,K,C,h,w), cos (Q,K) -> pair logits (Q,K)."""
        Q, K = s.shape[:2]
        close = closeness(cos)
        s2 = s.reshape(Q * K, *s.shape[2:])
        q2 = q.unsqueeze(1).expand(Q, K, *q.shape[1:]).reshape(s2.shape)
        pq = self.proj(q).unsqueeze(1).expand(Q, K, -1, *q.shape[2:]).reshape(Q * K, -1, *q.shape[2:])
        ps = self.proj(s2)
        local = F.cosine_similarity(q2, s2, dim=1, eps=1e-6).unsqueeze(1)  # (QK,1,h,w)
        x = torch.relu(self.pair(torch.cat([(pq - ps).abs(), local.to(pq.dtype)], dim=1)))
        lc = local.flatten(1).float()
        extra = torch.stack([close.reshape(-1) - 4.0, lc.mean(1), lc.amin(1)], dim=1)
        feats = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3)), extra.to(x.dtype)], dim=1)
        out = self.mlp(feats).reshape(Q, K).float()
        return out + self.close_scale * (close - self.close_bias)


def closeness(cos: Tensor) -> Tensor:
    """-log(1 - cosine) in float32: 0 for orthogonal, ~4 at 0.98, 13.8 for identical."""
    return -torch.log((1.0 - cos.float()).clamp_min(1e-6))


class SeedRelation(nn.Module):
    """The seed's run-1 relation head (Sung et al. 2018), scaled to the backbone's C channels.

    concat(q, s) 2C -> Conv3x3 2C->C -> BN -> ReLU -> AdaptiveMaxPool 5x5 -> Conv3x3 C->C
    -> BN -> ReLU -> AdaptiveMaxPool 1x1 -> Linear C->8 -> ReLU -> Linear 8->1 (a logit).
    """

    def __init__(self, channels: int):
        super().__init__()
        c = channels
        self.features = nn.Sequential(
            nn.Conv2d(2 * c, c, kernel_size=3, padding=1),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.AdaptiveMaxPool2d(5),
            nn.Conv2d(c, c, kernel_size=3, padding=1),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.AdaptiveMaxPool2d(1),
        )
        self.fc = nn.Sequential(nn.Linear(c, 8), nn.ReLU(inplace=True), nn.Linear(8, 1))

    def forward(self, q: Tensor, s: Tensor, cos: Tensor) -> Tensor:
        Q, K = s.shape[:2]
        s2 = s.reshape(Q * K, *s.shape[2:])
        q2 = q.unsqueeze(1).expand(Q, K, *q.shape[1:]).reshape(s2.shape)
        x = self.features(torch.cat([q2, s2], dim=1)).flatten(1)
        return self.fc(x).reshape(Q, K)


SupportFn = Callable[[Tensor], tuple[Tensor, Tensor]]


class FingerprintModel(nn.Module):
    """Backbone(s) + unit-norm embedding head + relation head + pooling (see module docstring)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        roles = ("shared",) if cfg.shared else ROLES
        self.backbones = nn.ModuleDict({r: Backbone(cfg.backbone, cfg.seed_stem) for r in roles})
        c = self.backbones[roles[0]].out_channels
        self.channels = c
        # one embedding head for both roles, so real and generated embeddings share a space; it sees
        # the map on a small grid (not globally pooled): where things are matters for near-copies
        self.embed_head = nn.Linear(c * cfg.embed_grid**2, cfg.embed_dim)
        if cfg.relation == "light":
            self.relation = LightRelation(c, cfg.relation_dim, cfg.relation_hidden)
        else:
            self.relation = SeedRelation(c)
        if cfg.pool == "attention":
            # logit = sum_k softmax(t * l)_k * l_k: t=0 is the mean, t->inf the max
            self.pool_temperature = nn.Parameter(torch.tensor(1.0))

    # -- pieces -------------------------------------------------------------------------------
    def backbone(self, role: str) -> Backbone:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        return self.backbones["shared" if self.cfg.shared else role]

    def fmap_size(self) -> int:
        """Side of the layer4 map for cfg.image_size input."""
        s = math.ceil(self.cfg.image_size / 2)  # conv1 stride 2
        if not self.cfg.seed_stem:
            s = math.ceil(s / 2)  # max-pool
        for _ in range(3):  # layer2..4 stride 2
            s = math.ceil(s / 2)
        return s

    def embed_fmap(self, fmap: Tensor) -> Tensor:
        """Unit-norm float32 embedding of a feature map (...,C,h,w) -> (...,D)."""
        lead = fmap.shape[:-3]
        g = self.cfg.embed_grid
        pooled = F.adaptive_avg_pool2d(fmap.reshape(-1, *fmap.shape[-3:]), g).reshape(*lead, -1)
        if not torch.is_autocast_enabled(pooled.device.type):
            pooled = pooled.to(self.embed_head.weight.dtype)
        return F.normalize(self.embed_head(pooled).float(), dim=-1)

    def encode(self, x: Tensor, role: str = "real") -> tuple[Tensor, Tensor]:
        """Images (B,1,H,W) in [0,1] -> (unit-norm embedding (B,D), feature map (B,C,h,w))."""
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"expected images of shape (B,1,H,W), got {tuple(x.shape)}")
        fmap = self.backbone(role)((x - GRAY_MEAN) / GRAY_STD)
        return self.embed_fmap(fmap), fmap

    def relate(self, q_fmap: Tensor, s_fmap: Tensor) -> Tensor:
        """Query maps (Q,C,h,w) and support maps (Q,K,C,h,w) -> pair logits (Q,K)."""
        if s_fmap.ndim != 5 or q_fmap.ndim != 4 or s_fmap.shape[0] != q_fmap.shape[0]:
            raise ValueError(
                f"relate wants (Q,C,h,w) and (Q,K,C,h,w), got {tuple(q_fmap.shape)} and {tuple(s_fmap.shape)}"
            )
        s_fmap = s_fmap.to(q_fmap.dtype)
        cos = (self.embed_fmap(q_fmap).unsqueeze(1) * self.embed_fmap(s_fmap)).sum(-1)
        return self.relation(q_fmap, s_fmap, cos)

    def pool(self, pair_logits: Tensor) -> Tensor:
        """K pair logits (Q,K) -> one membership logit per query (Q,)."""
        if self.cfg.pool == "max":
            return pair_logits.amax(dim=1)
        if self.cfg.pool == "mean":
            return pair_logits.mean(dim=1)
        w = torch.softmax(self.pool_temperature * pair_logits, dim=1)
        return (w * pair_logits).sum(dim=1)

    # -- the one forward ----------------------------------------------------------------------
    def forward(
        self,
        query: Tensor,
        support: Tensor | None = None,
        *,
        support_fmap: Tensor | None = None,
        support_fn: SupportFn | None = None,
    ) -> dict[str, Tensor]:
        """Embedding mode (query only) or a whole episode.

        query (Q,1,H,W) real images. The support set is one of: `support`
        (Q,K,1,H,W) generated images, encoded here; `support_fmap` (Q,K,C,h,w)
        precomputed maps; or `support_fn(q_emb) -> (s_emb (Q,K,D), s_fmap)`,
        which picks supports (e.g. nearest neighbours from a memory bank) from the
        query embeddings computed in this same call.
        Returns {"emb","fmap"} in embedding mode, else {"logit" (Q,), "pair_logits" (Q,K), "q_emb", "s_emb"}.
        """
        given = sum(v is not None for v in (support, support_fmap, support_fn))
        if given > 1:
            raise ValueError("give at most one of support, support_fmap, support_fn")
        q_emb, q_fmap = self.encode(query, "real")
        if given == 0:
            return {"emb": q_emb, "fmap": q_fmap}
        if support is not None:
            if support.ndim != 5 or support.shape[0] != query.shape[0]:
                raise ValueError(f"support must be (Q,K,1,H,W) with Q={query.shape[0]}, got {tuple(support.shape)}")
            Q, K = support.shape[:2]
            s_emb, s_fmap = self.encode(support.reshape(Q * K, *support.shape[2:]), "generated")
            s_emb, s_fmap = s_emb.reshape(Q, K, -1), s_fmap.reshape(Q, K, *s_fmap.shape[1:])
        elif support_fmap is not None:
            s_fmap = support_fmap
            s_emb = self.embed_fmap(s_fmap)
        else:
            s_emb, s_fmap = support_fn(q_emb.detach())
        pair_logits = self.relate(q_fmap, s_fmap)
        return {"logit": self.pool(pair_logits), "pair_logits": pair_logits, "q_emb": q_emb, "s_emb": s_emb}


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (trainable ones only if asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def describe(model: FingerprintModel) -> str:
    """One line: backbone(s), relation, parameter count (for logs)."""
    cfg = model.cfg
    n = count_parameters(model)
    return (
        f"{'shared' if cfg.shared else 'separate'} {cfg.backbone}{' (seed stem)' if cfg.seed_stem else ''}, "
        f"{cfg.relation} relation, {cfg.pool} pool, {cfg.image_size}px, {n / 1e6:.1f}M params"
    )


@contextlib.contextmanager
def preserved_modes(model: nn.Module) -> Iterator[None]:
    """Restore every submodule's train/eval flag on exit."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, t in flags:
            m.training = t
