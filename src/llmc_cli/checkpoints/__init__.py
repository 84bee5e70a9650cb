"""Checkpoints: atomic save, manifests with checksums, verification, rotation, lookup."""
