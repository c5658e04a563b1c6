"""Parallel ports: /dev/lpN printer writer and /dev/parportN (ppdev) access."""
