"""Fault injection: every fault ends in a one-line error (exit 2), a counted skip, or a correct resume.

The table `CASES` is the suite: for each input or fault, the command, the
expected exit code, the expected fragment of the one error line (or of the
output), and what must hold afterwards. Every command runs as a real process
(tests/_forkserver.py), and every case also checks: no traceback, exactly one
`fingerprint <command>: error:` line when it fails, no partial output (a
failed command leaves its output absent, or as it was), inputs untouched and
nothing written outside the output folder. Faults come from real mechanisms:
RLIMIT_FSIZE (a full disk: EFBIG) and a small tmpfs (ENOSPC) where it can be
mounted, a read-only bind mount (or `chattr +i`; chmod when not root) for an
unwritable folder, SIGKILL at seeded random points, concurrent writers.
The kill-in-every-stage and chaos tests (marked slow) kill `fingerprint run`
inside each stage, and at 5 seeded random moments, and check that the
resumed run ends byte-identical to an uninterrupted one. docs/reliability.md
lists every case with the test that holds it.
"""

from __future__ import annotations

import io
import json
import pickle
import random
import re
import shutil
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest
from faultkit import ForkServer, files_under, link_copy, read_only, replace_bytes, run_ok, snapshot
from PIL import Image

from fingerprint.core.files import sha256_file, write_json
from fingerprint.core.records import StageRecords
from fingerprint.embedding.features import Features
from fingerprint.tasks.configs import BASELINES, RUN_FILE_SCORER

#: the tiny run every case starts from (relative paths: run folders compare byte for byte across sandboxes)
RUN_ARGS = ["--seed", "3", "--epochs", "2", "--image-size", "32", "--k", "4", "--batch-size", "32", "--n-boot", "20",
            "--threads", "1", "--no-compare", "--baselines", ",".join(BASELINES)]  # fmt: skip
TRAIN_ARGS = ["--image-size", "32", "--threads", "1", "--seed", "3"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ForkServer(tmp_path_factory.mktemp("forkserver-logs"))
    yield s
    s.close()


@pytest.fixture(scope="module")
def ref(server, tmp_path_factory) -> Path:
    """REF/data (tiny benchmark, seed 3) and REF/run, an uninterrupted `fingerprint run` of it."""
    root = tmp_path_factory.mktemp("ref")
    r = server.run(["synth", "data", "--level", "tiny", "--seed", "3"], cwd=root)
    assert r.rc == 0, r.err[-2000:]
    r = server.run(["run", "data", "--out", "run", *RUN_ARGS], cwd=root)
    assert r.rc == 0, r.err[-3000:]
    return root


# ----------------------------------------------------------------------------- the sandbox of one case


@dataclass
class Sandbox:
    """A case's folder: what it prepares there, its output, and the reference run it may copy."""

    root: Path
    ref: Path
    ctx: dict[str, Any] = field(default_factory=dict)

    def data(self) -> Path:
        """A copy of the tiny benchmark (file times kept, as the run's stage records expect)."""
        if not (self.root / "data").exists():
            shutil.copytree(self.ref / "data", self.root / "data")
        return self.root / "data"

    def run(self) -> Path:
        """A (hard-linked) copy of the reference run folder."""
        self.data()
        return link_copy(self.ref / "run", self.root / "run")

    def shards(self, split: str = "test") -> Path:
        return shutil.copytree(self.ref / "run" / "shards" / split, self.root / f"shards-{split}")

    def model(self) -> Path:
        return link_copy(self.ref / "run" / "model", self.root / "model")


def one_png(folder: Path) -> Path:
    return sorted(folder.glob("*.png"))[0]


class Payload:
    """A pickle that creates a marker file when unpickled: proves no unpickling ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_pickle(sb: Sandbox) -> bytes:
    sb.ctx["marker"] = sb.root / "PWNED"
    return pickle.dumps(Payload(sb.ctx["marker"]))


def no_payload(sb: Sandbox, r) -> None:
    assert not sb.ctx["marker"].exists(), "a pickle payload ran"


# ----------------------------------------------------------------------------- faults


def corrupt_image(sb):
    data = sb.data()
    replace_bytes(one_png(data / "dev" / "used"), b"this is not an image")
    return {"out": sb.root / "out"}


def truncated_image(sb):
    data = sb.data()
    p = one_png(data / "dev" / "not_used")
    replace_bytes(p, p.read_bytes()[: p.stat().st_size // 2])
    return {"out": sb.root / "out"}


def odd_formats(sb):
    data = sb.data()
    base = np.asarray(Image.open(one_png(data / "dev" / "generated")))
    Image.fromarray(base.astype(np.uint16) * 257).save(data / "dev" / "generated" / "odd_16bit.png")
    Image.fromarray(np.stack([base] * 3, -1)).save(data / "dev" / "generated" / "odd_rgb.jpg", quality=90)
    Image.fromarray(base).convert("P").save(data / "dev" / "generated" / "odd_palette.gif")
    Image.fromarray(base).resize((100, 60)).save(data / "dev" / "generated" / "odd_size.tiff")
    return {"out": sb.root / "out"}


def packed_skips(expected: int) -> Callable:
    def check(sb, r):
        man = json.loads((sb.ctx["out"] / "manifest.json").read_text())
        assert man["n_skipped"] == expected and len(man["skipped"]) == expected and man["skipped"][0]["reason"]

    return check


def four_converted(sb, r):
    man = json.loads((sb.ctx["out"] / "manifest.json").read_text())
    assert man["converted"] >= 4 and man["count"] == 68 and man["n_skipped"] == 0


def truncated_shard(sb):
    shards = sb.shards("test")
    tar = sorted(shards.glob("*.tar"))[-1]
    replace_bytes(tar, tar.read_bytes()[: tar.stat().st_size // 2])
    return {"out": sb.root / "f.npz", "shards": shards, "model": sb.ref / "run" / "model"}


def shard_skip_counted(sb, r):
    with np.load(sb.ctx["out"], allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
    assert meta["skipped"] == {"shards": 1}, meta
    assert "skipped 1 shards" in r.err


def bad_config_file(sb):
    toml = sb.root / "bad.toml"
    toml.write_text("frobnicate = 1\n")
    return {"out": sb.root / "i.faiss", "toml": toml, "features": sb.ref / "run" / "features" / "test"}


def tampered_weights(sb):
    model = sb.model()
    w = model / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-100] ^= 0xFF
    replace_bytes(w, bytes(data))
    return {"out": sb.root / "f.npz", "model": model, "shards": sb.ref / "run" / "shards" / "test"}


def pickle_weights(sb):
    evil = sb.root / "resnet18.pt"
    evil.write_bytes(evil_pickle(sb))
    return {"out": sb.root / "model", "weights": evil, "dev": sb.ref / "run" / "shards" / "dev"}


def nan_features(sb):
    feats = Features.load(sb.ref / "run" / "features" / "test", fmaps=False)
    feats.embeddings = np.array(feats.embeddings)  # the folder's parts are read-only memory maps
    feats.embeddings[3, :] = np.nan
    bad = feats.save(sb.root / "nan.npz")
    return {"out": sb.root / "i.faiss", "features": bad}


RUNFILES = {
    "header": "figure_id,label\na_1,0\na_2,1\n",
    "blank-line": "a_1,0\n\na_2,1\n",
    "duplicate-id": "a_1,0\na_1,1\na_2,1\n",
    "extension": "a_1.png,0\na_2,1\n",
    "unknown-id": "a_1,0\na_3,1\na_2,1\n",
    "label": "a_1,0.5\na_2,1\n",
    "missing-ids": "a_1,0\n",
}


def runfile(rule: str) -> Callable:
    def prepare(sb):
        (sb.root / "ids.txt").write_text("a_1\na_2\n")
        (sb.root / "run.csv").write_text(RUNFILES[rule])
        return {"out": sb.root / "nothing", "file": sb.root / "run.csv", "ids": sb.root / "ids.txt"}

    return prepare


def id_collision(sb):
    data = sb.data()
    real = one_png(data / "test" / "real_unknown_1")
    shutil.copy2(one_png(data / "test" / "generated_1"), data / "test" / "generated_1" / real.name)
    sb.ctx["files"] = (data / "test" / "generated_1" / real.name, real)
    return {"out": sb.root / "out"}


def names_both_files(sb, r):
    line = r.error_lines()[0]
    assert all(str(f) in line for f in sb.ctx["files"]), line


def comma_in_name(sb):
    data = sb.data()
    real = one_png(data / "test" / "real_unknown_1")
    real.rename(real.with_name("a,b.png"))
    return {"out": sb.root / "out"}


def forged_run_file(sb):
    """A run.csv that does not match the test ids, with its stage record updated to vouch for it."""
    run = sb.run()
    lines = (run / "run.csv").read_text().splitlines()
    replace_bytes(
        run / "run.csv", ("\n".join([lines[0].replace("real_unknown", "real_unknwn"), *lines[1:]]) + "\n").encode()
    )
    rec_path = StageRecords(run).path(f"score-{RUN_FILE_SCORER}-test")
    rec = json.loads(rec_path.read_text())
    st = (run / "run.csv").stat()
    rec["outputs"]["run.csv"]["run.csv"] = {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sha256": sha256_file(run / "run.csv"),
    }
    replace_bytes(rec_path, json.dumps(rec).encode())
    return {"out": run}


def edited_run_file(sb):
    run = sb.run()
    lines = (run / "run.csv").read_text().splitlines()
    replace_bytes(run / "run.csv", ("\n".join(lines[:-1]) + "\n").encode())
    return {"out": run}


def same_as_reference(*names: str) -> Callable:
    def check(sb, r):
        for name in names:
            assert (sb.ctx["out"] / name).read_bytes() == (sb.ref / "run" / name).read_bytes(), name

    return check


def fresh(kind: str) -> Callable:
    """An output path that does not exist yet, with the inputs the command needs from the reference run."""

    def prepare(sb):
        run = sb.ref / "run"
        if kind == "run":
            sb.data()
        return {
            "out": sb.root / kind, "data": sb.ref / "data", "shards": run / "shards" / "test",
            "dev": run / "shards" / "dev", "model": run / "model", "scores": run / "scores" / "relation.csv",
            "truth": sb.ref / "data" / "test_truth.csv",
            "run": link_copy(run, sb.root / "runcopy") if kind == "report" else run,
        }  # fmt: skip

    return prepare


def read_only_parent(kind: str) -> Callable:
    def prepare(sb):
        ctx = fresh(kind)(sb)
        ctx["ro"] = sb.root / "ro"
        ctx["ro"].mkdir()
        ctx["out"] = ctx["ro"] / kind
        return ctx

    return prepare


def failed_early(sb, r):
    assert "images on 1 process" not in r.err, "embed computed before finding out it cannot write"


def train_config_nan(sb):
    (sb.root / "train.toml").write_text("lr = nan\n")
    sb.data()
    return {"out": sb.root / "run", "toml": sb.root / "train.toml"}


def checkpoint_fault(name: str, content: Callable[[Sandbox], bytes] | None, vouch: bool = False) -> Callable:
    """A copy of the reference model whose newest checkpoint has `name` replaced (None: removed)."""

    def prepare(sb):
        model = sb.model()
        ckpt = max((model / "checkpoints").iterdir(), key=lambda p: int(p.name.split("_")[-1]))
        target = ckpt / name
        if content is None:
            target.unlink()
        else:
            replace_bytes(target, content(sb))
        if vouch:  # the attacker also rewrote the checksum
            state = json.loads((ckpt / "train_state.json").read_text())
            state["files"][name] = sha256_file(target)
            replace_bytes(ckpt / "train_state.json", json.dumps(state).encode())
        return {"out": model, "dev": sb.ref / "run" / "shards" / "dev"}

    return prepare


def unsafe_member(name: str) -> Callable:
    def prepare(sb):
        shards = sb.shards("test")
        tar = sorted(shards.glob("*.tar"))[0]
        with tarfile.open(tar) as t:
            members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
            for i, (m, data) in enumerate(members):
                if i == 0:
                    m.name = name
                t.addfile(m, io.BytesIO(data))
        replace_bytes(tar, buf.getvalue())
        return {"out": sb.root / "nothing", "shards": shards}

    return prepare


def cut_at_member_boundary(sb):
    src = sorted((sb.ref / "run" / "shards" / "test").glob("*.tar"))[0]
    with tarfile.open(src) as t:
        last = t.getmembers()[-1]
    end = last.offset_data + -(-last.size // 512) * 512
    folder = sb.root / "bare"
    folder.mkdir()
    (folder / src.name).write_bytes(src.read_bytes()[:end])  # no manifest.json beside it
    return {"out": sb.root / "f.npz", "shards": folder, "model": sb.ref / "run" / "model"}


# ----------------------------------------------------------------------------- real-world inputs


def ct_slice(bits: int = 12, top: int = 4080, size: int = 256) -> np.ndarray:
    """A 16-bit container holding a `bits`-bit slice that uses every value 0..top (a CT slice as stored)."""
    values = np.arange(size * size) % (top + 1)
    values[-1] = top
    return np.random.default_rng(bits).permutation(values).reshape(size, size).astype(np.uint16)


def wide_image(name: str, fmt: str = "PNG", bits: int = 12, top: int = 4080) -> Callable:
    def prepare(sb):
        data = sb.data()
        with Image.open(sorted((data / "dev" / "generated").glob("*.png"))[0]) as first:
            size = first.size[0]  # the packing size (pack keeps the images' own size): no resampling of the slice
        Image.fromarray(ct_slice(bits, top, size)).save(data / "dev" / "generated" / name, format=fmt)
        sb.ctx["key"] = Path(name).stem
        return {"out": sb.root / "out"}

    return prepare


def stored_levels(minimum: int, *, exact: int | None = None, rule: str = "depth") -> Callable:
    """The wide image's stored pixels keep at least `minimum` distinct grey levels (all `exact` when given)."""

    def check(sb, r):
        from fingerprint.data.shards import decode_sample, iter_shard

        out = sb.ctx["out"]
        man = json.loads((out / "manifest.json").read_text())
        assert man["intensity"]["rule"] == rule, man["intensity"]
        for tar in sorted(out.glob("*.tar")):
            for sample in iter_shard(str(tar)):
                if sample["__key__"] == sb.ctx["key"]:
                    _, px, rec = decode_sample(sample)
                    levels = len(np.unique(px))
                    assert levels >= minimum, (levels, rec)
                    assert exact is None or levels == exact, (levels, rec)
                    return
        raise AssertionError("the wide image is not in the shards")

    return check


def mixed_depths(sb):
    ctx = wide_image("ct12.png")(sb)
    return ctx


def warned_once_mixed(sb, r):
    assert r.err.count("images arrive at different bit depths") == 1, r.err[-2000:]
    man = json.loads((sb.ctx["out"] / "manifest.json").read_text())
    assert man["intensity"]["mixed"] and man["intensity"]["depths"] == {"8": 64, "12": 1}


def linked(kind: str) -> Callable:
    """Data assembled from links: one dev image, or the whole dev/generated folder, linked from outside the data."""

    def prepare(sb):
        data = sb.data()
        elsewhere = sb.root / "elsewhere"
        elsewhere.mkdir()
        if kind == "file":
            target = one_png(data / "dev" / "used")
            shutil.move(target, elsewhere / target.name)
            (data / "dev" / "used" / target.name).symlink_to(elsewhere / target.name)
        else:
            shutil.move(data / "dev" / "generated", elsewhere / "generated")
            (data / "dev" / "generated").symlink_to(elsewhere / "generated", target_is_directory=True)
        return {"out": sb.root / "out"}

    return prepare


def count_packed(n: int, skipped: int = 0) -> Callable:
    def check(sb, r):
        man = json.loads((sb.ctx["out"] / "manifest.json").read_text())
        assert man["count"] == n and man["n_skipped"] == skipped, (man["count"], man["n_skipped"])

    return check


def broken_link(folder: str, name: str = "real_unknown_0099.png", target: str = "gone/nothing.png") -> Callable:
    def prepare(sb):
        data = sb.data()
        (data / folder / name).symlink_to(sb.root / target)
        sb.ctx["link"] = data / folder / name
        return {"out": sb.root / "out"}

    return prepare


def link_loop(sb):
    data = sb.data()
    (data / "dev" / "used" / "loop.png").symlink_to(data / "dev" / "used" / "loop.png")
    return {"out": sb.root / "out"}


def names_the_link(sb, r):
    line = r.error_lines()[0]
    assert str(sb.ctx["link"]) in line and "broken link" in line, line


def skip_listed(reason: str) -> Callable:
    def check(sb, r):
        man = json.loads((sb.ctx["out"] / "manifest.json").read_text())
        assert any(reason in s["reason"] for s in man["skipped"]), man["skipped"]

    return check


def corrupt_test_real(sb):
    data = sb.data()
    replace_bytes(one_png(data / "test" / "real_unknown_1"), b"not an image at all")
    return {"out": sb.root / "run"}


def huge_header(sb):
    """A PNG whose header says 13000 x 13000 (just under Pillow's pixel limit), its pixel data cut short."""
    import struct
    import zlib

    data = sb.data()
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, format="PNG")
    png = bytearray(buf.getvalue())
    ihdr = bytes(png[12:16]) + struct.pack(">II", 13000, 13000) + bytes(png[24:29])
    png[16:24] = struct.pack(">II", 13000, 13000)
    png[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    (data / "dev" / "generated" / "huge.png").write_bytes(bytes(png))
    return {"out": sb.root / "out"}


def big_real(sb):
    data = sb.data()
    Image.fromarray(np.full((1200, 1200), 90, np.uint8)).save(data / "dev" / "used" / "big_scan.png")
    return {"out": sb.root / "out"}


def null_shard_entry(sb):
    shards = sb.shards("test")
    man = json.loads((shards / "manifest.json").read_text())
    man["shards"].append(None)
    replace_bytes(shards / "manifest.json", json.dumps(man).encode())
    return {"out": sb.root / "f.npz", "shards": shards, "model": sb.ref / "run" / "model"}


def shard_entry(value: Any) -> Callable:
    def prepare(sb):
        ctx = null_shard_entry(sb)
        man = json.loads((ctx["shards"] / "manifest.json").read_text())
        man["shards"][-1] = value
        replace_bytes(ctx["shards"] / "manifest.json", json.dumps(man).encode())
        return ctx

    return prepare


def stalled(server, sb, case):
    """A shard server that stops sending mid-transfer (and holds the connection): embed ends, naming the URL."""
    from serve import serve_stalling

    shards = sb.shards("test")
    argv = ["embed", "--model", sb.ref / "run" / "model", "--out", sb.root / "f.npz", "--threads", "1",
            "--stall-timeout", "1", "--retries", "1"]  # fmt: skip
    suffix = ".json" if case.id == "stalled-manifest" else ".tar"
    with serve_stalling(shards, after=0 if suffix == ".json" else 2048, suffix=suffix) as base:
        sb.ctx["url"] = f"{base}/" + ("manifest.json" if suffix == ".json" else "shard-000000.tar")
        t0 = time.monotonic()
        r = server.run([*argv, "--shards", f"{base}/"], cwd=sb.root / "cwd", timeout=120)
        sb.ctx["seconds"] = time.monotonic() - t0
    assert not (sb.root / "f.npz").exists()
    return r


def wide_benchmark_run(server, sb, case):
    """`synth --bit-depth 12` writes 12-bit values in 16-bit PNGs; `run` takes them end to end on 16-bit shards."""
    r = server.run(["synth", "data12", "--level", "tiny", "--seed", "3", "--bit-depth", "12"], cwd=sb.root)
    assert r.rc == 0, r.err[-2000:]
    with Image.open(one_png(sb.root / "data12" / "dev" / "used")) as im:
        assert im.mode == "I;16" and np.asarray(im).max() < 4096
    r = server.run(["run", "data12", "--out", "run12", *RUN_ARGS], cwd=sb.root)
    for split in ("dev", "test"):
        man = json.loads((sb.root / "run12" / "shards" / split / "manifest.json").read_text())
        assert man["intensity"]["stored_bits"] == 16 and set(man["intensity"]["depths"]) == {"12"}, man["intensity"]
    assert len((sb.root / "run12" / "run.csv").read_text().splitlines()) == 20
    return r


def names_the_url(sb, r):
    line = r.error_lines()[0]
    assert sb.ctx["url"] in line and "stalled after 1 s" in line, line
    assert sb.ctx["seconds"] < 60, sb.ctx["seconds"]


def failing_collection_command(kind: str) -> Callable:
    """audit / attribute that pack their inputs, then fail (the model folder does not exist)."""

    def prepare(sb):
        data = sb.data()
        dev = data / "dev"
        sb.ctx["missing"] = sb.root / "no-model"
        if kind == "audit":
            argv = ["audit", "--candidate", dev / "used", "--reference", dev / "not_used", "--generated",
                    dev / "generated", "--model", sb.ctx["missing"], "--image-size", "32", "--no-report"]  # fmt: skip
        else:
            argv = ["attribute", "--subsets", f"a={dev / 'used'},b={dev / 'not_used'}", "--generated",
                    dev / "generated", "--model", sb.ctx["missing"], "--pair-score", "relation", "--image-size", "32",
                    "--no-report"]  # fmt: skip
        sb.ctx["argv"] = [str(a) for a in argv]
        return {"out": sb.root / kind}

    return prepare


def collection_command(server, sb, case):
    sb.ctx.update(failing_collection_command(case.id.split("-")[0])(sb))
    before = snapshot(sb.root, exclude=(sb.ctx["out"],))
    r = server.run([*sb.ctx["argv"], "--out", sb.ctx["out"]], cwd=sb.root / "cwd")
    assert snapshot(sb.root, exclude=(sb.ctx["out"],)) == before
    assert r.rc == 2 and not sb.ctx["out"].exists(), files_under(sb.ctx["out"])
    if case.id.endswith("-existing"):  # into a folder that holds the user's file: only that file is left
        sb.ctx["out"].mkdir()
        (sb.ctx["out"] / "notes.txt").write_text("mine")
        r = server.run([*sb.ctx["argv"], "--out", sb.ctx["out"]], cwd=sb.root / "cwd")
        assert r.rc == 2 and files_under(sb.ctx["out"]) == ["notes.txt"], files_under(sb.ctx["out"])
    return r


def truth_with(text: Callable[[str], str], *, to: str = "evaluate") -> Callable:
    """The reference truth file rewritten by `text` (a BOM, CRLF ...), for evaluate, a copy of the reference run
    (`to="run"`), or a new run of a copy of the data (`to="data"`)."""

    def prepare(sb):
        truth = sb.root / "truth.csv"
        truth.write_bytes(text((sb.ref / "data" / "test_truth.csv").read_text()).encode())
        if to == "evaluate":
            ctx = fresh("evaluate")(sb)
        else:
            ctx = {"out": sb.run() if to == "run" else sb.root / "run", "data": sb.data()}
        return ctx | {"truth": truth}

    return prepare


def bom(text: str) -> str:
    return "\ufeff" + text


def crlf_spaces(text: str) -> str:
    return "\r\n".join(f" {line.replace(',', ' ,')}\u00a0" for line in text.splitlines()) + "\r\n"


def drop_last(text: str) -> str:
    return "\n".join(text.splitlines()[:-1]) + "\n"


def metrics_as_reference(sb, r):
    """The run's metrics equal the reference run's (the truth file was read as the same labels)."""
    got = json.loads((sb.ctx["out"] / "metrics.json").read_text())
    ref = json.loads((sb.ref / "run" / "metrics.json").read_text())
    assert got["scorers"] == ref["scorers"]


def evaluated(sb, r):
    assert Path(sb.ctx["out"]).exists(), "evaluate wrote nothing"


def ids_file(text: str, run: str = "a_1,0\na_2,1\n") -> Callable:
    def prepare(sb):
        (sb.root / "ids.txt").write_bytes(text.encode())
        (sb.root / "run.csv").write_bytes(run.encode())
        return {"out": sb.root / "nothing", "file": sb.root / "run.csv", "ids": sb.root / "ids.txt"}

    return prepare


def config_table(text: str) -> Callable:
    def prepare(sb):
        ctx = bad_config_file(sb)
        ctx["toml"].write_text(text)
        return ctx

    return prepare


def dev_without(what: str) -> Callable:
    def prepare(sb):
        data = sb.data()
        if what == "not_used":
            shutil.rmtree(data / "dev" / "not_used")
        else:
            for f in (data / "dev" / what).iterdir():
                f.unlink()
        return {"out": sb.root / "run"}

    return prepare


def empty_test_generated(sb):
    data = sb.data()
    for f in (data / "test" / "generated_1").iterdir():
        f.unlink()
    return {"out": sb.root / "run"}


def renamed_real(name: str) -> Callable:
    def prepare(sb):
        data = sb.data()
        real = one_png(data / "test" / "real_unknown_1")
        real.rename(real.with_name(name))
        return {"out": sb.root / "out"}

    return prepare


# ----------------------------------------------------------------------------- cases with more than one command


def failed_stage_then_rerun(server, sb, case):
    """Score writes the run-file scorer's scores, then fails on run.csv: a re-run must not count the stage as done,
    and once the cause is gone the run finishes with the reference run file."""
    run = sb.run()
    (run / "run.csv").unlink()
    StageRecords(run).invalidate(f"score-{RUN_FILE_SCORER}-test")
    (run / "run.csv").mkdir()  # the run file cannot be written: os.replace onto a folder fails
    argv = ["run", "data", "--out", "run", *RUN_ARGS]
    first = server.run(argv, cwd=sb.root)
    assert first.rc == 2 and (run / "scores" / f"{RUN_FILE_SCORER}.csv").exists()  # failed half-way
    assert StageRecords(run).read(f"score-{RUN_FILE_SCORER}-test") is None
    again = server.run(argv, cwd=sb.root)
    assert again.rc == 2 and "run file:" not in again.out, "a failed stage counted as done"
    (run / "run.csv").rmdir()
    last = server.run(argv, cwd=sb.root)
    assert last.rc == 0 and (run / "run.csv").read_bytes() == (sb.ref / "run" / "run.csv").read_bytes()
    return first


def concurrent_runs(server, sb, case):
    """A second writer into a run folder gets a clear error naming the holder; the first is unharmed."""
    sb.run()
    first = server.start(["run", "data", "--out", "run", *RUN_ARGS], cwd=sb.root)
    assert first.wait_for("[pack-dev] complete")  # the run folder is locked by now
    second = server.run(["run", "data", "--out", "run", *RUN_ARGS, "--force"], cwd=sb.root)
    third = server.run(["report", "run", "--force"], cwd=sb.root)
    assert third.rc == 2 and f"in use by pid {first.pid}" in third.error_lines()[0]
    assert first.wait().rc == 0
    for name in ("run.csv", "model/model.safetensors", "scores/relation.csv"):
        assert (sb.root / "run" / name).read_bytes() == (sb.ref / "run" / name).read_bytes(), name
    assert not (sb.root / "run" / ".lock").exists()
    sb.ctx["holder"] = first.pid
    return second


def concurrent_trains(server, sb, case):
    dev = sb.ref / "run" / "shards" / "dev"
    argv = ["train", "--shards", dev, "--out", "m", *TRAIN_ARGS, "--epochs", "4"]
    first = server.start(argv, cwd=sb.root)
    assert first.wait_for("train: ")  # set up, training
    second = server.run([*argv, "--force"], cwd=sb.root)
    assert first.wait().rc == 0 and (sb.root / "m" / "model.json").exists()
    sb.ctx["holder"] = first.pid
    return second


def names_the_holder(sb, r):
    assert f"in use by pid {sb.ctx['holder']} on host" in r.error_lines()[0]


def kill_mid_training(server, sb, case):
    """kill -9 after the first checkpoint, then --resume latest: the weights of an uninterrupted run."""
    dev = sb.ref / "run" / "shards" / "dev"
    argv = ["train", "--shards", dev, *TRAIN_ARGS, "--epochs", "4", "--keep-checkpoints", "4"]
    assert server.run([*argv, "--out", "whole"], cwd=sb.root).rc == 0
    child = server.start([*argv, "--out", "cut"], cwd=sb.root)
    state = sb.root / "cut" / "checkpoints" / "checkpoint_0" / "train_state.json"
    deadline = time.monotonic() + 120
    while not state.exists() and time.monotonic() < deadline and not server.ended(child.id):
        time.sleep(0.005)
    child.kill()
    assert child.wait().rc == -9 and not (sb.root / "cut" / "model.json").exists(), "killed too late"
    resumed = server.run([*argv, "--out", "cut", "--resume", "latest"], cwd=sb.root)
    assert resumed.rc == 0, resumed.err[-2000:]
    for name in ("model.safetensors", "checkpoints/checkpoint_3/model.safetensors"):
        assert (sb.root / "cut" / name).read_bytes() == (sb.root / "whole" / name).read_bytes(), name
    return resumed


def kill_mid_pack(server, sb, case):
    """kill -9 while packing (a few large images keep it busy), then pack again: no stale temporary is left."""
    data = sb.data()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (3000, 3000), dtype=np.uint8)).save(
            data / "dev" / "generated" / f"big_{i}.png"
        )
    child = server.start(["pack", data / "dev", "out"], cwd=sb.root)
    deadline = time.monotonic() + 120
    while not list(sb.root.glob(".out.tmp-*")) and time.monotonic() < deadline and not server.ended(child.id):
        time.sleep(0.002)
    time.sleep(random.Random(5).uniform(0, 0.3))
    child.kill()
    assert child.wait().rc == -9
    assert list(sb.root.glob(".out.tmp-*")) and not (sb.root / "out").exists()  # the killed pack's temporary
    again = server.run(["pack", data / "dev", "out"], cwd=sb.root)
    assert not list(sb.root.glob(".out.tmp-*")), "stale temporary left behind"
    return again


def forged_comparator(server, sb, case):
    """Library case (no command loads comparators): a forged model file is refused whatever its sidecar says."""
    import skops.io as sio

    from fingerprint.analysis.comparators import load_comparator
    from fingerprint.core.errors import FingerprintError

    forged = sb.root / "cmp_logreg.skops"
    sio.dump({"model": Payload(sb.root / "never")}, forged)
    write_json(forged.with_name(forged.name + ".json"), {"sha256": sha256_file(forged)})
    with pytest.raises(FingerprintError, match="refusing to load untrusted types"):
        load_comparator(forged)
    evil = sb.root / "cmp_svm.skops"
    evil.write_bytes(evil_pickle(sb))
    write_json(evil.with_name(evil.name + ".json"), {"sha256": sha256_file(evil)})
    with pytest.raises(FingerprintError, match="not a readable skops file"):
        load_comparator(evil)
    return None


def tmpfs(size: str):
    """Mount a small tmpfs at the case's output parent (a real full disk: ENOSPC), or skip."""

    def prepare(sb):
        small = sb.root / "small"
        small.mkdir()
        if not run_ok("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(small)):
            pytest.skip("cannot mount a tmpfs here (needs mount privilege)")
        sb.ctx["unmount"] = small
        sb.data()
        return {"out": small / "run"}

    return prepare


# ----------------------------------------------------------------------------- the table


@dataclass
class Case:
    id: str
    fault: str
    prepare: Callable[[Sandbox], dict] | None
    argv: list[str] | None  # `{name}` is formatted from the prepared context
    rc: int | None
    message: str  # a fragment of the one error line (of stdout for exit 0, of either for exit 1)
    after: tuple[Callable, ...] = ()
    fsize: int | None = None  # RLIMIT_FSIZE in the command's process: a full disk
    readonly: bool = False  # ctx["ro"] is made read-only during the command
    custom: Callable | None = None  # several commands or timing: returns the result to check
    output: str = "absent"  # after a failure: "absent", "unchanged" (out existed) or "any"
    debug: bool = False


RUN = ["run", "data", "--out", "{out}", *RUN_ARGS]
TRAIN = ["train", "--shards", "{dev}", "--out", "{out}", *TRAIN_ARGS, "--epochs", "1"]
EMBED = ["embed", "--model", "{model}", "--shards", "{shards}", "--out", "{out}", "--threads", "1"]
SCORE = ["score", "--scorer", "dcr", "--shards", "{shards}", "--out", "{out}", "--threshold", "-5"]
EVALUATE = ["evaluate", "{scores}", "--truth", "{truth}", "--out", "{out}", "--n-boot", "20"]
REPORT = ["report", "{run}", "--out-dir", "{out}"]
PACK = ["pack", "{data}/dev", "{out}"]
RESUME = ["train", "--shards", "{dev}", "--out", "{out}", *TRAIN_ARGS, "--epochs", "2", "--resume", "latest"]
FULL = ("File too large", "{out}")  # RLIMIT_FSIZE: the write fails with EFBIG, naming the file being written
VALIDATE = ["validate", "{file}", "--ids", "{ids}"]
PACK_DATA = ["pack", "data/dev", "{out}"]  # the sandbox's own copy of the data

CASES: list[Case] = [
    # --- cases that already ended well (kept so they stay so)
    Case("corrupt-image", "a dev image is not an image", corrupt_image, ["pack", "data/dev", "{out}"], 0, "1 skipped",
         (packed_skips(1),)),
    Case("truncated-image", "a dev PNG cut in half", truncated_image, ["pack", "data/dev", "{out}"], 0, "1 skipped",
         (packed_skips(1),)),
    Case("odd-formats", "16-bit PNG, RGB JPEG, palette GIF, TIFF of another size", odd_formats,
         ["pack", "data/dev", "{out}"], 0, "0 skipped", (four_converted,)),
    Case("truncated-shard", "a test shard cut in half", truncated_shard, EMBED, 2, "truncated or changed"),
    Case("truncated-shard-skip", "the same, with --on-error skip", truncated_shard, [*EMBED, "--on-error", "skip"], 0,
         "", (shard_skip_counted,)),
    Case("bad-config-value", "--k 0", fresh("score"), [*SCORE, "--k", "0"], 2, "--k must be >= 1, got 0"),
    Case("bad-config-file", "an unknown key in --config", bad_config_file,
         ["index", "--features", "{features}", "--out", "{out}", "--config", "{toml}"], 2, "unknown key 'frobnicate'"),
    Case("tampered-weights", "a byte of model.safetensors flipped", tampered_weights, EMBED, 2,
         "does not match model.json"),
    Case("debug-traceback", "the same, with fingerprint --debug", tampered_weights, ["--debug", *EMBED], 2,
         "does not match model.json", debug=True),
    Case("pickle-as-weights", "--weights is a pickle with a payload", pickle_weights,
         [*TRAIN, "--weights", "{weights}"], 2, "cannot read weights", (no_payload,)),
    Case("kill-mid-training", "SIGKILL after the first checkpoint, then --resume latest", None, None, 0, "",
         custom=kill_mid_training),
    Case("kill-mid-pack", "SIGKILL while packing, then pack again", None, None, 0, "70 images", custom=kill_mid_pack),
    *[Case(f"validate-{rule}", f"run file breaking the {rule} rule", runfile(rule),
           ["validate", "{file}", "--ids", "{ids}"], 1, rule) for rule in RUNFILES],
    Case("nan-features", "a features file with NaN embeddings", nan_features,
         ["index", "--features", "{features}", "--out", "{out}"], 2, "nan.npz: embeddings contain NaN or infinity"),
    # --- names that clash, failed stages re-run, full and read-only disks, non-finite options, concurrent
    # writers, tampered checkpoints, options checked before work, unsafe shard members
    Case("id-collision-run", "test/generated_1/X.png beside test/real_unknown_1/X.png", id_collision, RUN, 2,
         "same name as the real image", (names_both_files,)),
    Case("id-collision-pack", "the same, packing the test split", id_collision, ["pack", "data/test", "{out}"], 2,
         "same name as the real image", (names_both_files,)),
    Case("comma-in-name", "a real test image renamed a,b.png", comma_in_name, RUN, 2,
         "cannot hold dots, commas, quotes or whitespace"),
    Case("failed-stage-rerun", "score fails after its score file, before run.csv; run again", None, None, 2,
         "run.csv", custom=failed_stage_then_rerun, output="any"),
    Case("run-file-checked", "a run.csv that misses a test id, its record forged to match", forged_run_file,
         ["run", "data", "--out", "run", *RUN_ARGS], 2, "unknown-id", output="any"),
    Case("edited-output-redone", "run.csv edited after its stage finished", edited_run_file,
         ["run", "data", "--out", "run", *RUN_ARGS], 0, "run file:", (same_as_reference("run.csv"),)),
    *[Case(f"full-disk-{kind}", "RLIMIT_FSIZE: writes past the limit fail", fresh(kind), argv, 2, FULL[0],
           fsize=limit) for kind, argv, limit in [
        ("pack", PACK, 64 << 10), ("embed", EMBED, 16 << 10), ("train", TRAIN, 1 << 20), ("score", SCORE, 256),
        ("evaluate", EVALUATE, 256), ("report", REPORT, 64 << 10), ("run", RUN, 64 << 10)]],
    Case("full-disk-tmpfs-run", "a 256 kB tmpfs as the output's file system: pack fills it (ENOSPC)", tmpfs("256k"),
         RUN, 2, "No space left on device"),
    Case("full-disk-tmpfs-run-later", "a 2 MB tmpfs: a later stage fills it; the finished stages stay for a resume",
         tmpfs("2m"), RUN, 2, "No space left on device", output="any"),
    *[Case(f"read-only-{kind}", "the output's folder is read-only", read_only_parent(kind), argv, 2,
           "cannot write here", (failed_early,) if kind == "embed" else (), readonly=True) for kind, argv in [
        ("pack", PACK), ("embed", EMBED), ("train", TRAIN), ("score", SCORE), ("evaluate", EVALUATE),
        ("report", REPORT), ("run", RUN)]],
    Case("lr-nan", "--lr nan", fresh("train"), [*TRAIN, "--lr", "nan"], 2, "--lr must be a finite number"),
    Case("lr-inf", "--lr inf", fresh("train"), [*TRAIN, "--lr", "inf"], 2, "--lr must be a finite number"),
    Case("clip-grad-nan", "--clip-grad nan", fresh("train"), [*TRAIN, "--clip-grad", "nan"], 2,
         "--clip-grad must be a finite number"),
    Case("train-config-nan", "lr = nan in run --train-config", train_config_nan,
         [*RUN, "--train-config", "{toml}"], 2, "train.lr must be a finite number"),
    Case("concurrent-run", "a second run --force into a running run's folder", None, None, 2, "in use by pid",
         (names_the_holder,), custom=concurrent_runs, output="any"),
    Case("concurrent-train", "a second train --force into a training's folder", None, None, 2, "in use by pid",
         (names_the_holder,), custom=concurrent_trains, output="any"),
    Case("resume-evil-optimizer", "optimizer.bin replaced by a pickle with a payload",
         checkpoint_fault("optimizer.bin", evil_pickle), RESUME, 2, "optimizer.bin: sha256 differs", (no_payload,),
         output="unchanged"),
    Case("resume-evil-optimizer-vouched", "the same, with its checksum rewritten too",
         checkpoint_fault("optimizer.bin", evil_pickle, vouch=True), RESUME, 2, "cannot load the checkpoint",
         (no_payload,), output="unchanged"),
    Case("resume-bad-rng", "random_states_0.pkl replaced by junk",
         checkpoint_fault("random_states_0.pkl", lambda sb: b"junk"), RESUME, 2, "random_states_0.pkl: sha256 differs",
         output="unchanged"),
    Case("resume-bad-rng-vouched", "the same, with its checksum rewritten too",
         checkpoint_fault("random_states_0.pkl", lambda sb: b"junk", vouch=True), RESUME, 2, "unreadable RNG state",
         output="unchanged"),
    Case("resume-missing-rng", "random_states_0.pkl deleted", checkpoint_fault("random_states_0.pkl", None),
         RESUME, 2, "missing from the checkpoint", output="unchanged"),
    Case("run-checks-options-first", "--index-factory Bogus", fresh("run"), [*RUN, "--index-factory", "Bogus"],
         2, "--index-factory: FAISS cannot build 'Bogus'"),
    Case("run-checks-k", "--k 0", fresh("run"), [*RUN, "--k", "0"], 2, "--k must be >= 1"),
    Case("run-checks-n-boot", "--n-boot -1", fresh("run"), [*RUN, "--n-boot", "-1"], 2, "--n-boot must be >= 0"),
    Case("run-checks-batch-size", "--batch-size 0", fresh("run"), [*RUN, "--batch-size", "0"], 2,
         "--batch-size must be >= 1"),
    Case("verify-dotdot-member", "a shard member named ../../x.json", unsafe_member("../../x.json"),
         ["inspect", "{shards}", "--verify"], 1, "unsafe member name '../../x.json'"),
    Case("verify-absolute-member", "a shard member named /etc/x.json", unsafe_member("/etc/x.json"),
         ["inspect", "{shards}", "--verify"], 1, "unsafe member name '/etc/x.json'"),
    Case("failed-train-no-folder", "train fails at set-up (--k 64 > the generated pool)", fresh("train"),
         [*TRAIN, "--k", "64"], 2, "larger than the generated pool"),
    Case("cut-at-member-boundary", "a shard cut at a member boundary, no manifest beside it",
         cut_at_member_boundary, EMBED, 2, "no end-of-archive marker"),
    # --- real-world inputs: medical bit depths, links, stalled networks, nothing dropped or altered in silence
    Case("twelve-bit-png", "a 12-bit CT slice (0..4080) in a 16-bit PNG", wide_image("ct12.png"), PACK_DATA, 0,
         "0 skipped", (stored_levels(256, exact=4081),)),
    Case("twelve-bit-tiff", "the same slice as a 16-bit TIFF", wide_image("ct12.tif", "TIFF"), PACK_DATA, 0,
         "0 skipped", (stored_levels(256, exact=4081),)),
    Case("twelve-bit-8-bit-store", "the same, stored at 8 bits (--bits 8): its own depth scales it",
         wide_image("ct12.png"), [*PACK_DATA, "--bits", "8"], 0, "0 skipped", (stored_levels(255),)),
    Case("ten-bit-window", "a 10-bit slice mapped by a CT window (--window 0,1023)",
         wide_image("ct10.png", bits=10, top=1023), [*PACK_DATA, "--window", "0,1023"], 0, "0 skipped",
         (stored_levels(256, exact=1024, rule="window"),)),
    Case("full-range-16-bit", "a full-range 16-bit slice", wide_image("ct16.png", bits=16, top=65535), PACK_DATA, 0,
         "0 skipped", (stored_levels(4096),)),
    Case("bad-window", "--window 100,100", fresh("pack"), [*PACK, "--window", "100,100"], 2,
         "--window: not a window LO,HI with LO < HI"),
    Case("twelve-bit-run", "synth --bit-depth 12, then run on it", None, None, 0, "run file:",
         custom=wide_benchmark_run),
    Case("mixed-depths", "one 12-bit slice among 8-bit images: warned once", mixed_depths, PACK_DATA, 0, "0 skipped",
         (warned_once_mixed,)),
    Case("linked-file", "a dev image linked from outside the data folder", linked("file"), PACK_DATA, 0, "0 skipped",
         (count_packed(64),)),
    Case("linked-folder", "dev/generated is a link to a folder outside the data", linked("folder"), PACK_DATA, 0,
         "0 skipped", (count_packed(64),)),
    Case("linked-folder-run", "the same, for run", linked("folder"), RUN, 0, "run file:",
         (same_as_reference("run.csv"),)),
    Case("linked-folder-inside", "the same with --links inside: refused, a counted skip", linked("folder"),
         [*PACK_DATA, "--links", "inside"], 0, "1 skipped", (count_packed(24, 1), skip_listed("leads outside"))),
    Case("broken-link-test", "a broken link in test/real_unknown_1", broken_link("test/real_unknown_1"), RUN, 2,
         "broken link", (names_the_link,)),
    Case("broken-link-pack", "a broken link in dev/used: a counted, listed skip", broken_link("dev/used", "x.png"),
         PACK_DATA, 0, "1 skipped", (count_packed(64, 1), skip_listed("broken link"))),
    Case("link-loop", "a link to itself in dev/used: a counted skip", link_loop, PACK_DATA, 0, "1 skipped",
         (skip_listed("cannot be followed"),)),
    Case("corrupt-test-real", "a real test image that is not an image", corrupt_test_real, RUN, 2,
         "unreadable test image", output="any"),
    Case("stalled-shard", "a shard server that stops sending mid-transfer", None, None, 2, "stalled after 1 s",
         (names_the_url,), custom=stalled),
    Case("stalled-manifest", "the same server stalling on manifest.json", None, None, 2, "stalled after 1 s",
         (names_the_url,), custom=stalled),
    Case("audit-no-partial-output", "audit packs its inputs, then fails", None, None, 2, "no-model",
         custom=collection_command),
    Case("audit-no-partial-output-existing", "the same into a folder with a file of the user's", None, None, 2,
         "no-model", custom=collection_command),
    Case("attribute-no-partial-output", "attribute packs its inputs, then fails", None, None, 2, "no-model",
         custom=collection_command),
    Case("null-shard-entry", "a manifest with a null shard entry", null_shard_entry, EMBED, 2,
         "shards[2] is None, expected an object"),
    Case("number-shard-entry", "a shard entry that is a number", shard_entry(7), EMBED, 2, "is 7, expected an object"),
    Case("dotdot-shard-entry", "a shard entry named ../x.tar", shard_entry({"name": "../x.tar"}), EMBED, 2,
         "expected a shard file name"),
    Case("huge-image", "a 13000 x 13000 PNG header: a counted skip naming it", huge_header, PACK_DATA, 0, "1 skipped",
         (skip_listed("too large: 13000x13000"),)),
    Case("max-image-memory", "a 1200 x 1200 scan over --max-image-memory 1M", big_real,
         [*PACK_DATA, "--max-image-memory", "1M"], 0, "1 skipped", (skip_listed("too large"),)),
    Case("truth-bom-evaluate", "test_truth.csv saved with a BOM (Excel's CSV UTF-8)", truth_with(bom),
         [*EVALUATE[:3], "{truth}", *EVALUATE[4:]], 0, "", (evaluated,)),
    Case("truth-crlf-evaluate", "the truth file with CRLF and spaces (also non-breaking) around fields",
         truth_with(crlf_spaces), [*EVALUATE[:3], "{truth}", *EVALUATE[4:]], 0, "", (evaluated,)),
    Case("truth-bom-run", "a BOM truth file given to run", truth_with(bom, to="run"),
         ["run", "data", "--out", "run", *RUN_ARGS, "--truth", "{truth}"], 0, "run file:", (metrics_as_reference,)),
    Case("truth-missing-id-run", "a truth file that misses a test image: refused before the first stage",
         truth_with(drop_last, to="data"), [*RUN, "--truth", "{truth}"], 2,
         "{truth}: 1 real test image(s) have no label"),
    Case("validate-ids-bom", "an id file with a BOM", ids_file("\ufeffa_1\na_2\n"), VALIDATE, 0, "valid"),
    Case("validate-ids-crlf-nbsp", "an id file with CRLF and a non-breaking space",
         ids_file("a_1\u00a0\r\na_2\r\n"), VALIDATE, 0, "valid"),
    Case("validate-run-bom-ids-bom", "both with a BOM and CRLF",
         ids_file("\ufeffa_1\r\na_2\r\n", "\ufeffa_1,0\r\na_2,1\r\n"), VALIDATE, 0, "valid"),
    Case("config-unknown-table", "a misspelled table [rnu] in --config", config_table("[rnu]\nk = 3\n"),
         ["index", "--features", "{features}", "--out", "{out}", "--config", "{toml}"], 2, "unknown table '[rnu]'"),
    Case("config-unknown-key-in-table", "an unknown key in the command's own table",
         config_table("[index]\nfactory = 1\n"), ["index", "--features", "{features}", "--out", "{out}", "--config",
         "{toml}"], 2, "unknown key 'factory'"),
    Case("dev-without-not-used", "dev/ without not_used/: refused before the first stage", dev_without("not_used"),
         RUN, 2, "dev/not_used: missing or holds no usable image"),
    Case("dev-empty-generated", "an empty dev/generated/", dev_without("generated"), RUN, 2,
         "dev/generated: missing or holds no usable image"),
    Case("test-empty-generated", "an empty test/generated_1/", empty_test_generated, RUN, 2,
         "test/generated_1: missing or holds no usable image"),
    Case("quote-in-id", 'a real test image named a"b.png', renamed_real('a"b.png'), RUN, 2,
         "cannot hold dots, commas, quotes or whitespace"),
    Case("quote-in-id-pack", "the same, packing the test split", renamed_real('a"b.png'),
         ["pack", "data/test", "{out}"], 2, "cannot hold dots, commas, quotes or whitespace"),
    Case("forged-comparator", "a skops file needing an untrusted type, or a pickle, vouched by its sidecar",
         None, None, None, "", custom=forged_comparator),
]  # fmt: skip


def _format(argv: list[str], ctx: dict) -> list[str]:
    return [str(a).format(**{k: v for k, v in ctx.items() if isinstance(v, (str, Path))}) for a in argv]


def _command(argv: list[str]) -> str:
    return next(a for a in argv if not a.startswith("--"))


def check_result(case: Case, sb: Sandbox, r) -> None:
    if case.rc is not None:
        assert r.rc == case.rc, f"exit {r.rc}, expected {case.rc}\n{r.err[-3000:]}"
    if "Traceback (most recent call last)" in r.err:
        assert case.debug, f"traceback:\n{r.err[-3000:]}"
    if case.rc == 2:
        lines = r.error_lines()
        assert len(lines) == 1, f"expected one error line, got {lines}"
        assert lines[0].startswith(f"fingerprint {_command(case.argv or ['run'])}: error: ") or case.custom
        assert case.message.format(**sb.ctx) in lines[0], lines[0]
    elif case.rc == 1:
        assert case.message in r.out + r.err
    elif case.rc == 0:
        assert case.message in r.out + r.err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fault(case: Case, server, ref, tmp_path):
    sb = Sandbox(tmp_path, ref)
    try:
        _run_case(case, server, sb)
    finally:
        if "unmount" in sb.ctx:
            run_ok("umount", str(sb.ctx["unmount"]))


def _run_case(case: Case, server, sb: Sandbox) -> None:
    (sb.root / "cwd").mkdir()
    if case.prepare is not None:
        sb.ctx.update(case.prepare(sb))
    out = sb.ctx.get("out")
    keep_out = (out,) if out is not None else ()
    before = snapshot(sb.root, exclude=keep_out)
    out_before = snapshot(out) if out is not None and Path(out).is_dir() else None
    if case.custom is not None:
        r = case.custom(server, sb, case)
        if r is None:  # a library case: checked inside
            return
    else:
        argv = _format(case.argv, sb.ctx)
        cwd = sb.root if any(a in ("data", "run", "data/dev", "data/test") for a in argv) else sb.root / "cwd"
        if case.readonly:
            with read_only(sb.ctx["ro"]) as how:
                sb.ctx["mechanism"] = how
                r = server.run(argv, cwd=cwd, fsize=case.fsize)
        else:
            r = server.run(argv, cwd=cwd, fsize=case.fsize)
    check_result(case, sb, r)
    for check in case.after:
        check(sb, r)
    if case.custom is None:
        assert snapshot(sb.root, exclude=keep_out) == before, "inputs changed or something written outside the output"
        assert files_under(sb.root / "cwd") == []
    if case.rc == 2 and out is not None and case.output != "any":
        if out_before is not None and case.output == "unchanged":
            assert snapshot(out) == out_before, "a failed command changed its output folder"
        else:
            assert not Path(out).exists(), f"partial output left: {files_under(out) if Path(out).is_dir() else out}"
    if out is not None and Path(out).is_dir():
        assert not [f for f in files_under(out) if re.search(r"\.(tmp|old)-\d+", f)], "temporaries left"


# ----------------------------------------------------------------------------- kill -9 inside the stages of `run`


def stage_seconds(run: Path) -> dict[str, float]:
    """Each stage's seconds in the reference run, in order, from its stage records."""
    records = [json.loads(p.read_text()) for p in (run / ".stages").glob("*.json")]
    return {r["stage"]: r["seconds"] for r in sorted(records, key=lambda r: r["finished"])}


def kill_at(server, root: Path, moments: list[tuple[str, float]]) -> list:
    """SIGKILL `run` `offset` seconds into `stage`, for each moment in turn, starting it again after each kill.

    A moment whose stage is already complete (an earlier kill landed after
    it) is passed over, the same process going on to the next moment. After
    each kill every stage record present must describe complete outputs.
    Returns one result per moment: `.stage`, `.rc` (-9: killed), `.inside`
    (the stage had not finished when it was killed).
    """
    results, child = [], None
    for stage, offset in moments:
        child = child or server.start(["run", "data", "--out", "run", *RUN_ARGS], cwd=root)
        seen = child.wait_first([f"[{stage}] fingerprint ", f"[{stage}] complete"])
        if seen is None:  # the run ended: nothing more to interrupt
            r = child.wait()
            assert r.rc == 0, r.err[-3000:]
            break
        if seen.endswith("complete"):
            results.append(SimpleNamespace(stage=stage, rc=None, inside=False, err=""))
            continue
        time.sleep(offset)
        child.kill()
        r = child.wait()
        results.append(SimpleNamespace(stage=stage, rc=r.rc, inside=StageRecords(root / "run").read(stage) is None,
                                       err=r.err))  # fmt: skip
        check_records(root / "run")
        child = None
    if child is not None and not server.ended(child.id):
        assert child.wait().rc == 0
    print("kills:", [(r.stage, r.rc, r.inside) for r in results])
    return results


def check_records(run: Path) -> None:
    """Every stage record that exists describes outputs that are complete and as recorded."""
    records = StageRecords(run)
    for p in sorted(records.dir.glob("*.json")) if records.dir.is_dir() else []:
        rec = json.loads(p.read_text())
        for name, files in rec["outputs"].items():
            base = run / name
            for rel, d in files.items():
                f = base if base.is_file() else base / rel
                assert f.is_file() and f.stat().st_size == d["size"], f"{p.name}: {f} incomplete"


def assert_same_as_reference(root: Path, ref: Path) -> None:
    same = ("run.csv", "metrics.json", "model/model.safetensors", "scores/relation.csv", "features/test/features.json")
    for name in same:
        assert (root / "run" / name).read_bytes() == (ref / "run" / name).read_bytes(), name
    leftovers = [f for f in files_under(root / "run") if re.search(r"\.(tmp|old)-\d+|^\.lock$", Path(f).name)]
    assert leftovers == []


STAGE_KINDS = ("pack-dev", "train", "embed-dev", "index-dev", "score-relation-dev", "score-ssim-test", "cluster",
               "evaluate", "report")  # fmt: skip


@pytest.mark.slow
def test_kill_in_every_stage_then_resume(server, ref, tmp_path):
    """SIGKILL at a seeded random point inside each kind of stage; each re-run resumes; the end is the reference's."""
    shutil.copytree(ref / "data", tmp_path / "data")
    seconds = stage_seconds(ref / "run")
    rng = random.Random(12)
    moments = [(s, rng.uniform(0, 0.8 * max(seconds.get(s, 0.2), 0.05))) for s in STAGE_KINDS]
    results = kill_at(server, tmp_path, moments)
    killed = [r for r in results if r.rc == -9]
    assert len(killed) >= len(STAGE_KINDS) - 1, "the run ended before its stages could be interrupted"
    # stages of a few milliseconds (pack, index) mostly end before the kill lands; the longer ones must be hit inside
    long = [r for r in killed if seconds.get(r.stage, 0) >= 0.5]
    assert sum(r.inside for r in long) >= len(long) - 1, [(r.stage, r.inside) for r in results]
    assert all("taking over the lock" in r.err for r in killed[1:]), "a killed run's lock was not taken over"
    r = server.run(["run", "data", "--out", "run", *RUN_ARGS], cwd=tmp_path)
    assert r.rc == 0, r.err[-3000:]
    assert_same_as_reference(tmp_path, ref)


@pytest.mark.slow
def test_chaos_five_random_kills(server, ref, tmp_path):
    """Chaos: `fingerprint run` killed at 5 seeded random moments of its work, re-run each time: byte-identical end."""
    shutil.copytree(ref / "data", tmp_path / "data")
    seconds = stage_seconds(ref / "run")
    timeline = np.cumsum(list(seconds.values()))
    rng = random.Random(2024)
    moments = []
    for t in sorted(rng.uniform(0, float(timeline[-1])) for _ in range(5)):
        i = int(np.searchsorted(timeline, t, side="right"))
        stage = list(seconds)[min(i, len(seconds) - 1)]
        moments.append((stage, 0.8 * (t - (float(timeline[i - 1]) if i else 0.0))))
    results = kill_at(server, tmp_path, moments)
    assert len([r for r in results if r.rc == -9]) >= 4, "fewer than 4 of the 5 kills came while the run was running"
    r = server.run(["run", "data", "--out", "run", *RUN_ARGS], cwd=tmp_path)
    assert r.rc == 0, r.err[-3000:]
    assert_same_as_reference(tmp_path, ref)


@pytest.mark.slow
def test_kill_in_compare_then_resume(server, ref, tmp_path):
    """The compare stage (left out of the reference run for time): killed inside, the re-run completes it."""
    sb = Sandbox(tmp_path, ref)
    sb.run()
    argv = ["run", "data", "--out", "run", *[a for a in RUN_ARGS if a != "--no-compare"], "--no-report"]
    child = server.start(argv, cwd=tmp_path)
    assert child.wait_for("[compare] fingerprint ")
    time.sleep(random.Random(7).uniform(0.2, 3.0))
    child.kill()
    assert child.wait().rc == -9
    assert StageRecords(tmp_path / "run").read("compare") is None and not (tmp_path / "run" / "compare").exists()
    r = server.run(argv, cwd=tmp_path)
    assert r.rc == 0, r.err[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert any(k.startswith("cmp_") for k in metrics["scorers"]) and (tmp_path / "run" / "compare" / "cv.json").exists()
    assert (tmp_path / "run" / "run.csv").read_bytes() == (ref / "run" / "run.csv").read_bytes()
