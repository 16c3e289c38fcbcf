"""Engine: numpy in, numpy out; no napari."""
