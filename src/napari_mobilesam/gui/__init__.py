"""napari GUI: the only package that imports napari, qtpy or magicgui."""
