"""Helpers the fixture scripts in tools/ share (imported by them; run the scripts from the
repository root as `python tools/SCRIPT.py`, so this folder is on the import path)."""
import torch


def narrow_linears(model, widths):
    """Rebuilds every nn.Linear of `model` in place with in/out widths mapped through `widths`
    (widths not in the map are kept), under the same attribute name: names and structure stay the
    reference's."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(parent, name, torch.nn.Linear(widths.get(child.in_features, child.in_features),
                                                      widths.get(child.out_features, child.out_features),
                                                      bias=child.bias is not None))
    return model
