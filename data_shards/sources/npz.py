"""Cine arrays saved with numpy (``cine`` as (Z, T, H, W)); work in progress."""
