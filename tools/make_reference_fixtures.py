"""Writes the small reference files in crates/gimp-io/tests/data/reference/ with the Python tools
users have (h5py, torch, numpy), laid out exactly as CLAM, TRIDENT and torch.save write them.

Run once by hand (needs: pip install numpy h5py torch safetensors); the outputs are committed so
the tests need no Python. Re-running gives the same values (fixed seed).
"""
import os
import sys

import h5py
import numpy as np
import torch

out = sys.argv[1] if len(sys.argv) > 1 else "crates/gimp-io/tests/data/reference"
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(7)
N, D = 7, 16
feats = rng.random((N, D), dtype=np.float32)
coords = (np.arange(N * 2).reshape(N, 2) * 256).astype(np.int64)


def clam_save_hdf5(path, asset_dict, attr_dict=None, mode="w"):
    # CLAM wsi_core/wsi_utils.py::save_hdf5: resizable datasets, chunks of one row.
    with h5py.File(path, mode) as f:
        for key, val in asset_dict.items():
            shape = val.shape
            dset = f.create_dataset(key, shape=shape, maxshape=(None,) + shape[1:],
                                    chunks=(1,) + shape[1:], dtype=val.dtype)
            dset[:] = val
            if attr_dict is not None and key in attr_dict:
                for k, v in attr_dict[key].items():
                    dset.attrs[k] = v


# CLAM extract_features_fp.py: features f32, coords cast to int32 (older versions keep int64)
clam_save_hdf5(f"{out}/clam_features.h5", {"features": feats, "coords": coords.astype(np.int32)})
clam_save_hdf5(f"{out}/clam_features_int64.h5", {"features": feats, "coords": coords})
# CLAM create_patches_fp.py: coords int64 with attributes on the dataset
clam_save_hdf5(f"{out}/clam_patches.h5", {"coords": coords}, {"coords": {
    "patch_size": 256, "patch_level": 0, "downsample": np.array([1.0, 1.0]),
    "downsampled_level_dim": np.array([2220, 2967]), "level_dim": np.array([2220, 2967]),
    "name": "slide_a", "save_path": "/tmp/patches"}})
# TRIDENT extract_tissue_coords
with h5py.File(f"{out}/trident_patches.h5", "w") as f:
    d = f.create_dataset("coords", data=coords)
    d.attrs.update({"patch_size": 256, "patch_size_level0": 512, "level0_magnification": 40.0,
                    "target_magnification": 20.0, "overlap": 0, "name": "slide_a",
                    "savetodir": "/tmp/trident"})

torch.save(torch.from_numpy(feats), f"{out}/features.pt")
torch.save(torch.from_numpy(feats.T.copy()).T, f"{out}/features_transposed_view.pt")
torch.save({"features": torch.from_numpy(feats)}, f"{out}/dict.pt")
torch.save(torch.from_numpy(feats), f"{out}/legacy.pt", _use_new_zipfile_serialization=False)
torch.save(torch.from_numpy(feats).double(), f"{out}/features_f64.pt")
np.save(f"{out}/features.npy", feats)
np.save(f"{out}/features_fortran_f64.npy", np.asfortranarray(feats.astype(np.float64)))
np.save(f"{out}/features.npy", feats)
np.savetxt(f"{out}/features_expected.txt", feats, fmt="%.9g")
try:
    from safetensors.numpy import save_file
    save_file({"features": feats, "coords": coords}, f"{out}/features.safetensors")
except ImportError:
    print("safetensors not installed: skipped features.safetensors", file=sys.stderr)
print("wrote", out)
