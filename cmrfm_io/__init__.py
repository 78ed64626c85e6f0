"""Bottom-layer file helpers shared by every package; imports nothing from the project."""
