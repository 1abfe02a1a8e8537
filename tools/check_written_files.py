"""Reads the files written by `cargo run -p gimp-io --example write_samples DIR` with h5py, torch
and numpy, as CLAM would, and checks the values. Run by hand where torch is installed."""
import sys

import h5py
import numpy as np
import torch

d = sys.argv[1]
expected = (np.arange(15, dtype=np.float32) * 0.5).reshape(5, 3)
with h5py.File(f"{d}/features.h5", "r") as f:
    assert f["features"].dtype == np.float32 and f["coords"].dtype == np.int32
    assert f["features"].maxshape == (None, 3) and f["features"].chunks == (1, 3)
    np.testing.assert_array_equal(f["features"][:], expected)
    np.testing.assert_array_equal(f["coords"][:, 0], np.arange(5) * 256)
with h5py.File(f"{d}/patches.h5", "r") as f:
    a = f["coords"].attrs
    assert a["patch_size"] == 256 and a["patch_level"] == 0 and list(a["downsample"]) == [1.0, 1.0]
t = torch.load(f"{d}/features.pt", weights_only=True)
assert t.dtype == torch.float32 and tuple(t.shape) == (5, 3)
np.testing.assert_array_equal(t.numpy(), expected)
np.testing.assert_array_equal(np.load(f"{d}/features.npy"), expected)
print("all written files read correctly by h5py, torch and numpy")
