"""Model code (torch only): TinyViT encoder, builder, weights registry, detector, encoder backends.

Submodules are imported explicitly (``napari_mobilesam.model.build`` …) so that importing the
weights registry does not import torch.
"""
