"""Bottom-layer helpers and names shared by every package (files, modality names); imports
nothing from the project."""
