"""The fast shard reading path: tar parsing, .npy decoding and the region shuffle pool agree with
webdataset / numpy on every archive and array form they may meet."""
from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from bench import shards
from datamodules.region_shards import float32, shuffled_region_batches


def _tar(path, members: dict[str, bytes], fmt=tarfile.PAX_FORMAT, mtime=0) -> None:
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), mtime
            tar.addfile(info, io.BytesIO(data))


def _webdataset_samples(path) -> list[dict]:
    import webdataset as wds

    return list(wds.tarfile_to_samples()(iter([{"url": str(path)}])))


def _same(ours: list[dict], theirs: list[dict]) -> None:
    assert [s["__key__"] for s in ours] == [s["__key__"] for s in theirs]
    for a, b in zip(ours, theirs):
        assert {k for k in a if not k.startswith("__")} == {k for k in b if not k.startswith("__")}
        for k in a:
            if not k.startswith("__"):
                assert bytes(a[k]) == b[k]


LONG = "d" * 120  # a path longer than ustar's 100-byte name field


@pytest.mark.parametrize("fmt, mtime", [(tarfile.PAX_FORMAT, 0), (tarfile.PAX_FORMAT, 0.0),  # 0.0: pax headers
                                        (tarfile.USTAR_FORMAT, 0), (tarfile.GNU_FORMAT, 0)])
def test_tar_samples_equal_webdataset(tmp_path, fmt, mtime):
    members = {"a.feats.npy": b"x" * 1000, "a.meta.json": b"{}", "b.feats.npy": b"", "b.META.JSON": b"[1]",
               f"{LONG}/c.rle.json": b"[]" * 300, "__meta__": b"skipped", "noext": b"skipped too"}
    if fmt == tarfile.USTAR_FORMAT:  # ustar splits the long path into prefix + name
        members[f"{'p' * 120}/x.y"] = members.pop(f"{LONG}/c.rle.json")
    path = tmp_path / "s.tar"
    _tar(path, members, fmt, mtime)
    _same(list(shards.read_tar_samples([str(path)])), _webdataset_samples(path))


def test_shards_written_before_int_mtime_still_read(tmp_path):
    """Shards written with ``mtime=0.0`` carry a pax header per member."""
    import webdataset as wds

    rng = np.random.default_rng(0)
    sample = {"__key__": "k", "feats.npy": shards._npy(rng.standard_normal((3, 4)).astype(np.float16))}
    path = tmp_path / "old.tar"
    with open(path, "wb") as stream:
        writer = wds.TarWriter(stream, encoder=False, mtime=0.0)
        writer.write(sample)
        writer.close()
    assert path.read_bytes()[156:157] == b"x"
    (read,) = shards.read_tar_samples([str(path)])
    np.testing.assert_array_equal(shards.load_npy(read["feats.npy"]), np.load(io.BytesIO(sample["feats.npy"])))


def test_damaged_tars_raise_or_end_like_tarfile(tmp_path):
    path = tmp_path / "s.tar"
    _tar(path, {"a.x": b"1" * 2000, "b.x": b"2" * 2000})
    data = path.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:1500])  # inside a's data
    with pytest.raises(shards.ShardError, match="cut.tar is damaged.*unexpected end") as err:  # names the shard
        list(shards.read_tar_samples([str(cut)]))
    assert isinstance(err.value.__cause__, tarfile.ReadError)
    cut.write_bytes(data[:512 + 2048])  # at the member boundary: a valid shorter archive
    assert [s["__key__"] for s in shards.read_tar_samples([str(cut)])] == ["a"]
    bad = bytearray(data)
    bad[0] ^= 1  # a's name changes, its checksum no longer matches
    cut.write_bytes(bytes(bad))
    with pytest.raises(shards.ShardError, match="cut.tar is damaged.*checksum") as err:
        list(shards.read_tar_samples([str(cut)]))
    assert isinstance(err.value.__cause__, tarfile.ReadError)
    cut.write_bytes(b"")  # tarfile: ReadError("empty file"); an extraction never writes an empty shard
    with pytest.raises(shards.ShardError, match="cut.tar is damaged.*empty file"):
        list(shards.read_tar_samples([str(cut)]))
    cut.write_bytes(data[:300])  # inside the first header: tarfile raises too
    with pytest.raises(shards.ShardError, match="truncated header"):
        list(shards.read_tar_samples([str(cut)]))


@pytest.mark.parametrize("array", [np.arange(12, dtype=np.int64).reshape(3, 4), np.zeros((0, 5), np.float16),
                                   np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)),
                                   np.array(3.5), np.arange(5, dtype=">f4"), np.ones((2, 2), bool)])
@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_load_npy_equals_np_load(array, version):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, version=version)
    raw = buf.getvalue()
    for copy in (True, False):
        got = shards.load_npy(memoryview(raw), copy=copy)
        assert got.dtype == array.dtype and got.shape == array.shape
        np.testing.assert_array_equal(got, np.load(io.BytesIO(raw)))
    assert shards.load_npy(raw).flags.writeable


def test_load_npy_refuses_pickles_and_garbage():
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(shards.ShardError, match="pickle"):
        shards.load_npy(buf.getvalue())
    with pytest.raises(shards.ShardError, match="magic"):
        shards.load_npy(b"not an npy member")


def test_decode_sample_decodes_only_the_fields_asked_for():
    rng = np.random.default_rng(1)
    masks = rng.random((2, 5, 6)) > 0.5
    from bench.rle import encode_rles

    sample = shards.encode_sample("k", feats=rng.standard_normal((2, 3)), rles=encode_rles(masks),
                                  areas=masks.sum((1, 2)), hist=np.ones((2, 4)), label=np.zeros((5, 6), np.uint8),
                                  meta={"id": "k"})
    out = shards.decode_sample(sample, ("feats", "hist"), copy=False)
    assert set(out) == {"key", "feats", "hist"} and not out["feats"].flags.writeable
    with pytest.raises(shards.ShardError, match="extract.patches=true"):
        shards.decode_sample(sample, ("patches",))


@pytest.mark.parametrize("buffer, batch", [(50, 16), (1, 7), (1000, 10)])
def test_region_pool_yields_every_region_once_when_drained(buffer, batch):
    rng = np.random.default_rng(2)
    counts = rng.integers(0, 30, 20)
    ids = np.arange(counts.sum())
    samples, start = [], 0
    for n in counts:  # feats row i holds region id i in every column; hist and areas too
        rows = ids[start:start + n]
        samples.append({"feats": np.repeat(rows[:, None], 3, 1).astype(np.float16),
                        "hist": np.repeat(rows[:, None], 2, 1).astype(np.int32), "areas": rows.copy()})
        start += n

    def drawn(seed):
        out = list(shuffled_region_batches(iter(samples), buffer, batch, np.random.default_rng(seed)))
        assert all(len(b["feats"]) == batch for b in out)
        for b in out:
            assert (b["feats"][:, 0].long() == b["areas"]).all() and (b["hist"][:, 1] == b["areas"]).all()
        return np.concatenate([b["areas"].numpy() for b in out]) if out else np.zeros(0, int)

    got = drawn(0)
    assert len(got) == len(ids) // batch * batch and len(set(got.tolist())) == len(got)  # no repeats
    assert np.array_equal(got, drawn(0)) and (len(got) < 2 * batch or not np.array_equal(got, drawn(1)))
    assert not np.array_equal(got, np.sort(got)) or len(got) <= batch


def test_float32_conversion_is_exact():
    values = np.random.default_rng(3).standard_normal((70, 1000)).astype(np.float16)
    np.testing.assert_array_equal(float32(values).numpy(), values.astype(np.float32))
    assert float32(values[:0]).shape == (0, 1000)


def test_float32_reads_read_only_views_without_warning():
    import warnings

    view = np.frombuffer(np.arange(64, dtype=np.float16).tobytes(), np.float16).reshape(8, 8)
    assert not view.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(float32(view).numpy(), view.astype(np.float32))


def _outcome(read) -> tuple[str, list[dict] | None]:
    try:
        return "ok", list(read())
    except Exception as err:  # noqa: BLE001 - the kind of failure is compared below
        return type(err).__name__, None


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_fuzzed_shards_read_like_webdataset_or_fail_naming_the_shard(tmp_path, fmt):
    """Random truncations and byte flips of a shard with long (pax / GNU longname) member names:
    whatever the fast reader yields is exactly what webdataset's tarfile reader yields, and when
    tarfile cannot read the archive the fast reader raises ShardError naming it (never other samples)."""
    path = tmp_path / "s.tar"
    members = {}
    for i in range(4):
        members[f"{LONG}/k{i}.feats.npy"] = bytes(range(256)) * (i + 1)
        members[f"{LONG}/k{i}.meta.json"] = b'{"i": %d}' % i
    _tar(path, members, fmt=fmt, mtime=0.0)
    data = path.read_bytes()
    rng = np.random.default_rng(0)
    damaged = tmp_path / "damaged.tar"
    kinds = {"same": 0, "both fail": 0, "ours fail": 0}
    for trial in range(120):
        bad = bytearray(data)
        if trial % 2:
            bad = bad[: int(rng.integers(0, len(data)))]
        else:
            for pos in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
                bad[pos] ^= int(rng.integers(1, 256))
        damaged.write_bytes(bytes(bad))
        theirs_kind, theirs = _outcome(lambda: _webdataset_samples(damaged))
        ours_kind, ours = _outcome(lambda: shards.read_tar_samples([str(damaged)]))
        if ours is not None:
            assert theirs is not None, f"trial {trial}: tarfile fails ({theirs_kind}) but the fast reader did not"
            _same(ours, theirs)
            kinds["same"] += 1
        else:
            assert ours_kind == "ShardError", f"trial {trial}: {ours_kind} instead of ShardError"
            kinds["both fail" if theirs is None else "ours fail"] += 1
    assert kinds["same"] > 20 and kinds["both fail"] > 20, kinds  # the fuzzing reached both outcomes
