"""The public API in one place: every stage's entry function and its config dataclass.

Each stage is `run_<stage>(<Stage>Config) -> dict`; the `fingerprint <stage>`
command maps its flags to the config and calls the function. Import from here,
or from the stage's own module (listed in docs/api.md):

    from fingerprint.api import RunConfig, run_pipeline

    summary = run_pipeline(RunConfig(data_dir="data/benchmark-medium-seed0", out="runs/mine"))
"""

from fingerprint.analysis.cluster import ClusterConfig, run_cluster
from fingerprint.analysis.compare import CompareConfig, run_compare
from fingerprint.benchdata.synth import SynthConfig, run_synth
from fingerprint.data.pack import PackConfig, run_pack
from fingerprint.data.shards import InspectConfig, run_inspect
from fingerprint.embedding.embed import EmbedConfig, run_embed
from fingerprint.embedding.index import IndexConfig, run_index
from fingerprint.evaluation.evaluate import EvaluateConfig, run_evaluate
from fingerprint.evaluation.runfile import ValidateConfig, run_validate
from fingerprint.membership.fuse import FuseConfig, run_fuse
from fingerprint.membership.profile import ProfileConfig, run_profile
from fingerprint.membership.score import ScoreConfig, run_score
from fingerprint.report.build import ReportConfig, run_report
from fingerprint.tasks.attribute import AttributeConfig, run_attribute
from fingerprint.tasks.audit import AuditConfig, run_audit
from fingerprint.tasks.configs import DemoConfig, RunConfig
from fingerprint.tasks.demo import run_demo
from fingerprint.tasks.pipeline import run_pipeline
from fingerprint.training.adapt import AdaptConfig, run_adapt
from fingerprint.training.pretrain import PretrainConfig, run_pretrain
from fingerprint.training.train import TrainConfig, run_train

#: command -> (entry function, config class), in pipeline order
STAGES = {
    "synth": (run_synth, SynthConfig),
    "pack": (run_pack, PackConfig),
    "inspect": (run_inspect, InspectConfig),
    "adapt": (run_adapt, AdaptConfig),
    "pretrain": (run_pretrain, PretrainConfig),
    "train": (run_train, TrainConfig),
    "embed": (run_embed, EmbedConfig),
    "index": (run_index, IndexConfig),
    "profile": (run_profile, ProfileConfig),
    "fuse": (run_fuse, FuseConfig),
    "score": (run_score, ScoreConfig),
    "compare": (run_compare, CompareConfig),
    "cluster": (run_cluster, ClusterConfig),
    "evaluate": (run_evaluate, EvaluateConfig),
    "validate": (run_validate, ValidateConfig),
    "report": (run_report, ReportConfig),
    "run": (run_pipeline, RunConfig),
    "audit": (run_audit, AuditConfig),
    "attribute": (run_attribute, AttributeConfig),
    "demo": (run_demo, DemoConfig),
}

__all__ = [name for fn, cls in STAGES.values() for name in (fn.__name__, cls.__name__)]
