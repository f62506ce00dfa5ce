"""Cluster outputs: a truncated, labelled dendrogram PNG and the Markdown summary."""

from test_cluster import blobs

from fingerprint.analysis.cluster import ClusterConfig, analyse, cluster_split
from fingerprint.analysis.cluster_outputs import composition_table, dendrogram_png, summary_markdown


def test_dendrogram_and_summary(tmp_path):
    c = cluster_split(blobs(), ClusterConfig(n_clusters=3))
    png = dendrogram_png(c, tmp_path / "d.png", leaves=5, title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = composition_table(c.composition)
    assert table.startswith("| cluster | n | generated |") and len(table.splitlines()) == 2 + len(c.composition)
    md = summary_markdown(analyse(blobs(), None, ClusterConfig(n_clusters=3, n_boot=0)))
    assert md.startswith("# Hierarchical clustering (ward linkage") and "## Cluster scorer" in md
