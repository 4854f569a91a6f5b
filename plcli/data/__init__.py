"""Data layer: manifests, validation, labels, audio, features, datasets, augmentation, demo data."""
