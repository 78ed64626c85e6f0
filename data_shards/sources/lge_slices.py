"""2D LGE slices with masks grouped into subjects by case id (EMIDEC); work in progress."""
