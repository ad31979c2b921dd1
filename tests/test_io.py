import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mdcf import io


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with io.atomic_write(target, "w") as f:
            f.write("half written")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]  # no temporary left behind
    with io.atomic_write(target, "w") as f:
        f.write("new")
    assert target.read_text() == "new"


def test_atomic_write_refuses_a_folder_before_writing(tmp_path):
    with pytest.raises(IsADirectoryError, match=f"{tmp_path} is a folder"):
        with io.atomic_write(tmp_path) as f:
            f.write(b"never")
    assert list(tmp_path.iterdir()) == [] and list(tmp_path.parent.glob(f".{tmp_path.name}.*")) == []


def test_atomic_write_uses_normal_permissions(tmp_path):
    with io.atomic_write(tmp_path / "f.bin") as f:
        f.write(b"x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o666 & ~umask


dtypes = st.sampled_from([np.int32, np.int64, np.float32, np.float64, np.uint8, np.bool_])


@settings(max_examples=40, deadline=None)
@given(
    arrays=st.dictionaries(
        st.text(min_size=1, max_size=8),
        dtypes.flatmap(lambda d: hnp.arrays(d, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=7))),
        max_size=4,
    ),
    meta=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3),
)
def test_write_read_round_trip(tmp_path_factory, arrays, meta):
    path = tmp_path_factory.mktemp("rt") / "a.mdcf"
    io.write_arrays(path, arrays, meta)
    back, back_meta = io.read_arrays(path)
    assert back_meta == meta
    assert list(back) == list(arrays)
    for name, array in arrays.items():
        assert back[name].dtype == array.dtype and back[name].shape == array.shape
        np.testing.assert_array_equal(back[name], array)


@pytest.fixture
def stored(tmp_path):
    path = tmp_path / "a.mdcf"
    io.write_arrays(path, {"x": np.arange(1000, dtype=np.int64), "s": np.array(["ab", "c"])}, {"k": 1})
    return path


def test_truncated_file_is_detected(stored):
    data = stored.read_bytes()
    stored.write_bytes(data[:-100])
    with pytest.raises(io.CorruptFileError, match="truncated or padded"):
        io.read_arrays(stored)


def test_flipped_bit_is_detected(stored):
    data = bytearray(stored.read_bytes())
    arrays, _ = io.read_arrays(stored)
    data[-(64 + 500)] ^= 0x10  # inside the int64 array's bytes
    stored.write_bytes(bytes(data))
    with pytest.raises(io.CorruptFileError, match="CRC-32"):
        io.read_arrays(stored)


def test_every_flipped_bit_outside_the_padding_is_detected(tmp_path):
    path = tmp_path / "a.mdcf"
    io.write_arrays(path, {"x": np.arange(3, dtype=np.int64), "name": np.array(["ab"])}, {"epoch": 5})
    data = path.read_bytes()
    header_len = int.from_bytes(data[8:16], "little")
    header = json.loads(data[16:16 + header_len])
    spans = [(0, 16 + header_len + 4)] + [(e["offset"], e["offset"] + e["nbytes"]) for e in header["arrays"]]
    for start, end in spans:
        for position in range(start, end):
            for bit in (0x01, 0x80):
                flipped = bytearray(data)
                flipped[position] ^= bit
                path.write_bytes(bytes(flipped))
                with pytest.raises(io.CorruptFileError):
                    io.read_arrays(path)


def test_files_of_format_version_1_are_still_read(tmp_path):
    # Version 1: the same layout without the header's CRC-32, arrays from the next 64-byte boundary.
    array = np.arange(5, dtype=np.float32)
    entry = {"name": "w", "dtype": array.dtype.str, "shape": [5], "nbytes": array.nbytes,
             "crc32": zlib.crc32(array.tobytes())}
    for header_len in range(100, 400):  # the offsets depend on the header's own length
        entry["offset"] = -(-(16 + header_len) // 64) * 64
        header = {"format_version": 1, "meta": {"epoch": 3}, "arrays": [entry],
                  "total_size": entry["offset"] + 64}
        blob = json.dumps(header).encode()
        if len(blob) == header_len:
            break
    content = b"MDCFARR1" + len(blob).to_bytes(8, "little") + blob
    content += b"\0" * (entry["offset"] - len(content)) + array.tobytes()
    path = tmp_path / "v1.mdcf"
    path.write_bytes(content + b"\0" * (header["total_size"] - len(content)))
    arrays, meta = io.read_arrays(path)
    assert meta == {"epoch": 3} and list(arrays) == ["w"]
    np.testing.assert_array_equal(arrays["w"], array)


def test_other_file_is_rejected(tmp_path):
    path = tmp_path / "x.mdcf"
    path.write_bytes(b"PK\x03\x04 not ours")
    with pytest.raises(io.CorruptFileError, match="not an mdcf array file"):
        io.read_arrays(path)
    path.write_bytes(b"")
    with pytest.raises(io.CorruptFileError):
        io.read_arrays(path)


def test_object_arrays_are_refused(tmp_path):
    with pytest.raises(TypeError, match="dtype object"):
        io.write_arrays(tmp_path / "o.mdcf", {"o": np.array([1, "a"], dtype=object)})
    assert not (tmp_path / "o.mdcf").exists()
    for bad in (np.zeros(2, "V3"), np.zeros(2, [("x", "<i4")])):  # raw bytes and records: their layout would be lost
        with pytest.raises(TypeError, match="cannot be stored"):
            io.write_arrays(tmp_path / "v.mdcf", {"v": bad})


def test_extended_floats_keep_their_dtype(tmp_path):
    # numpy's type string for bfloat16 and the float8 types is a bare '<V2' / '|V1': read back
    # from it, a half-precision table would come back as raw bytes.
    ml_dtypes = pytest.importorskip("ml_dtypes")
    arrays = {"bf16": np.arange(-3, 5, dtype=np.float32).astype(ml_dtypes.bfloat16).reshape(2, 4),
              "f8": np.linspace(-2, 2, 5).astype(ml_dtypes.float8_e4m3fn), "f16": np.ones(3, np.float16)}
    io.write_arrays(tmp_path / "x.mdcf", arrays)
    back, _ = io.read_arrays(tmp_path / "x.mdcf")
    for name, array in arrays.items():
        assert back[name].dtype == array.dtype and back[name].shape == array.shape
        np.testing.assert_array_equal(back[name].astype(np.float32), array.astype(np.float32))


def test_a_killed_saves_temporary_is_removed_by_the_next_save(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    tag = io._writer_tag(int(dead.stdout))
    stale = tmp_path / f".model.mdcf.{tag}.abc123.part"
    stale.write_bytes(b"half a checkpoint")
    foreign = tmp_path / ".model.mdcf.otherhost~1.abc123.part"  # another host's write: never touched
    foreign.write_bytes(b"in progress elsewhere")
    io.write_arrays(tmp_path / "model.mdcf", {"x": np.arange(3)}, {})
    assert not stale.exists() and foreign.exists()
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".part"] == [foreign.name]
