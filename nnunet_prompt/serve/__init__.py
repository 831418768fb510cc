"""`nnunet-prompt serve`: trained prompt models behind nnInteractive's HTTP protocol (3D Slicer, napari)."""
