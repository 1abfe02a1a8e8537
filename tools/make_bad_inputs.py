"""Writes the malformed-input corpus in crates/gimp-io/tests/data/bad/ (run once; outputs are
committed). Each file is broken in one way a real cohort file can be; tests/bad_inputs.rs lists
the error kind and the location each must produce."""
import gzip
import os
import shutil
import sys
import zipfile

import h5py
import numpy as np
import torch

out = sys.argv[1] if len(sys.argv) > 1 else "crates/gimp-io/tests/data/bad"
ref = os.path.join(os.path.dirname(out), "reference")
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(3)
f = rng.random((7, 16), dtype=np.float32)
c = (np.arange(14).reshape(7, 2) * 256).astype(np.int32)


def h5(name, **datasets):
    with h5py.File(f"{out}/{name}", "w") as h:
        for k, v in datasets.items():
            h.create_dataset(k, data=v)


def text(name, s):
    with open(f"{out}/{name}", "w") as fh:
        fh.write(s)


# --- HDF5 feature and patch files
data = open(f"{ref}/clam_features.h5", "rb").read()
open(f"{out}/truncated.h5", "wb").write(data[:3000])
text("not_hdf5.h5", "case_id,slide_id,label\n")
nan = f.copy(); nan[2, 3] = np.nan
h5("nan_features.h5", features=nan, coords=c)
inf = f.copy(); inf[5, 0] = np.inf
h5("inf_features.h5", features=inf, coords=c)
h5("empty_bag.h5", features=np.zeros((0, 16), np.float32), coords=np.zeros((0, 2), np.int32))
h5("features_1d.h5", features=f[0])
h5("no_features.h5", coords=c)
h5("coords_mismatch.h5", features=f, coords=c[:5])
h5("coords_3cols.h5", features=f, coords=np.zeros((7, 3), np.int32))
h5("int_features.h5", features=(f * 100).astype(np.int32), coords=c)
h5("patches_no_size.h5", coords=c)

# --- torch / numpy / safetensors
torch.save({"features": torch.from_numpy(f)}, f"{out}/dict.pt")
torch.save(torch.from_numpy(f), f"{out}/legacy.pt", _use_new_zipfile_serialization=False)
data = open(f"{ref}/features.pt", "rb").read()
open(f"{out}/truncated.pt", "wb").write(data[: len(data) // 2])
torch.save(torch.zeros(2, 3, 4), f"{out}/pt_3d.pt")
text("not_npy.npy", "hello")
np.save(f"{out}/npy_int.npy", np.arange(6).reshape(2, 3))
np.save(f"{out}/npy_1d.npy", np.arange(6, dtype=np.float32))
open(f"{out}/bad.safetensors", "wb").write(b"\xff\xff\xff\xff\xff\xff\xff\x7f{}")

# --- dataset CSVs
text("dataset_ragged.csv", "case_id,slide_id,label\np1,s1,LUAD\np2,s2\n")
text("dataset_no_label.csv", "case_id,slide_id,class\np1,s1,LUAD\n")
text("dataset_dup_slide.csv", "case_id,slide_id,label\np1,s1,LUAD\np2,s1,LUSC\n")
text("dataset_conflicting_labels.csv", "case_id,slide_id,label\np1,s1,LUAD\np1,s2,LUSC\n")
text("dataset_empty_case.csv", "case_id,slide_id,label\np1,s1,LUAD\n,s2,LUSC\n")
text("dataset_empty.csv", "case_id,slide_id,label\n")

# --- split files
text("split_bad_header.csv", ",training,validation,testing\n0,s1,s2,s3\n")
text("split_bool_two_true.csv", ",train,val,test\ns1,True,False,False\ns2,True,True,False\n")
text("split_empty.csv", ",train,val,test\n")

# --- expression
text("matrix_nonnumeric.tsv", "case_id\tENSG1\tENSG2\np1\t1.0\t2.0\np2\t3.0\tabc\n")
text("matrix_dup_gene.tsv", "case_id\tG1\tG1\np1\t1.0\t2.0\n")
text("matrix_missing_value.tsv", "case_id\tG1\tG2\np1\t1.0\t2.0\np2\t\t4.0\n")
text("matrix_one_column.tsv", "case_id\np1\n")
with gzip.open(f"{out}/matrix_truncated.tsv.gz", "wb") as g:
    g.write(("case_id\t" + "\t".join(f"G{i}" for i in range(2000)) + "\n").encode() * 5)
data = open(f"{out}/matrix_truncated.tsv.gz", "rb").read()
open(f"{out}/matrix_truncated.tsv.gz", "wb").write(data[: len(data) // 2])
star_head = ("# gene-model: GENCODE v36\n"
             "gene_id\tgene_name\tgene_type\tunstranded\tstranded_first\tstranded_second\ttpm_unstranded\tfpkm_unstranded\tfpkm_uq_unstranded\n"
             "N_unmapped\t\t\t8\t8\t8\t\t\t\n")
text("star_no_fpkm.tsv", "# gene-model: GENCODE v36\ngene_id\tgene_name\tgene_type\tunstranded\nENSG1.1\tA\tprotein_coding\t3\n")
text("star_ragged.tsv", star_head + "ENSG1.1\tA\tprotein_coding\t3\t1\t2\t4.0\t1.5\n")
text("star_bad_value.tsv", star_head + "ENSG1.1\tA\tprotein_coding\t3\t1\t2\t4.0\tn/a\t1.0\n")
text("legacy_three_cols.FPKM.txt", "ENSG1.1\t1.0\t2.0\n")
text("sample_sheet_missing_col.tsv", "File ID\tFile Name\tCase ID\n1\ta.tsv\tp1\n")
text("signatures_ragged.csv", "A,B\nX,Y,Z\n")
print("wrote", out)
