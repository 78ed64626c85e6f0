"""Self-supervised objectives (one per file) and the Lightning systems that train them."""
