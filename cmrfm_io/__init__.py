"""Bottom-layer helpers and names shared by every package (files, modality names, the arguments
a constructor accepts); imports nothing from the project."""
