"""Where shards live: URL kinds, the manifest beside a shard, fsspec through WebDataset's gopen, uploads."""

from __future__ import annotations

import pytest
from test_shards import SIZE, make_layout

from fingerprint.core.errors import FingerprintError
from fingerprint.data import urls
from fingerprint.data.pack import pack
from fingerprint.data.shards import read_manifest, resolve
from fingerprint.data.stream import StreamConfig, load_all


def test_url_kinds_and_siblings():
    assert urls.scheme("https://h/d/shard-000001.tar") == "https" and urls.scheme("pipe:cat x.tar") == "pipe"
    assert urls.scheme("data/dev") is None and urls.scheme("C:\\data") is None and urls.scheme("a:b") is None
    assert urls.is_url("s3://b/dev") and not urls.is_url("file:///tmp/x") and not urls.is_url("runs/x")
    assert str(urls.local_path("file:///tmp/x/dev")) == "/tmp/x/dev" and urls.local_path("gs://b/x") is None
    assert urls.sibling("http://h/d/shard-000001.tar", "manifest.json") == "http://h/d/manifest.json"
    assert urls.sibling("pipe:curl -s https://h/d/shard-000002.tar | cat", "manifest.json") == (
        "pipe:curl -s https://h/d/manifest.json | cat"
    )
    assert urls.shard_name("pipe:aws s3 cp s3://b/dev/shard-000003.tar -") == "shard-000003.tar"
    assert urls.shard_name("https://h/d/shard-000004.tar?sig=abc") == "shard-000004.tar"
    assert urls.expand("d/shard-{000000..000002}.tar") == [f"d/shard-00000{i}.tar" for i in range(3)]


def test_pack_to_an_fsspec_url_and_read_it_back(tmp_path):
    """memory:// is a real fsspec filesystem: pack uploads (manifest last), every reader takes the URL."""
    make_layout(tmp_path / "dev", "dev", n_gen=4, n_real=2)
    man = pack(tmp_path / "dev", "memory://fp-test/dev", image_size=SIZE, max_count=3)
    local = pack(tmp_path / "dev", tmp_path / "out", image_size=SIZE, max_count=3)
    assert man == local == read_manifest("memory://fp-test/dev")
    assert resolve("memory://fp-test/dev").urls[0] == "memory://fp-test/dev/shard-000000.tar"
    a, b = load_all("memory://fp-test/dev", StreamConfig()), load_all(tmp_path / "out", StreamConfig())
    assert a["key"] == b["key"] and bool((a["image"] == b["image"]).all())
    with pytest.raises(FingerprintError, match=r"memory://fp-test/dev: already exists \(use pack.force"):
        pack(tmp_path / "dev", "memory://fp-test/dev", image_size=SIZE)
    pack(tmp_path / "dev", "memory://fp-test/dev", image_size=SIZE, max_count=100, force=True)
    assert len(resolve("memory://fp-test/dev").urls) == 1
    with pytest.raises(FingerprintError, match=r"only upload to an fsspec URL"):
        urls.upload_folder(tmp_path / "out", "https://h/dev")


def test_object_store_without_its_extra_is_one_clear_line():
    pytest.importorskip("fsspec")
    try:
        import s3fs  # noqa: F401

        pytest.skip("s3fs is installed here")
    except ImportError:
        pass
    with pytest.raises(FingerprintError, match=r"^s3://bucket/dev/manifest.json: s3:// needs an optional package "
                       r"\(pip install 'fingerprint\[s3\]'"):  # fmt: skip
        resolve("s3://bucket/dev")


def test_http_reads_have_a_stall_timeout_and_retries(tmp_path, monkeypatch):
    """curl gives up on a server that sends nothing for the stall time, tries again, then one line names the URL."""
    import time

    from serve import serve, serve_stalling

    monkeypatch.setenv(urls.STALL_ENV, "1")
    monkeypatch.setenv(urls.RETRIES_ENV, "1")
    cmd = urls.curl_command("http://h/x.tar")
    assert cmd[cmd.index("--speed-time") + 1] == "1" and cmd[cmd.index("--speed-limit") + 1] == "1"
    (tmp_path / "a.tar").write_bytes(b"x" * 5000)
    with serve_stalling(tmp_path, after=0) as base:
        t0 = time.monotonic()
        with pytest.raises(FingerprintError, match=r"/a.tar: stalled after 1 s \(no data for 1 s, 2 tries"):
            urls.read_bytes(f"{base}/a.tar")
        assert time.monotonic() - t0 < 30
    with serve(tmp_path) as base:
        assert urls.read_bytes(f"{base}/a.tar") == b"x" * 5000
        with pytest.raises(FingerprintError, match=r"/b.tar: cannot read \(reader command exited with status 22\)"):
            urls.read_bytes(f"{base}/b.tar")
    monkeypatch.setenv(urls.STALL_ENV, "0")
    with pytest.raises(FingerprintError, match="FINGERPRINT_STALL_TIMEOUT='0': must be >= 1"):
        urls.network_limits()
