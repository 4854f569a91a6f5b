"""Data layer: manifests, validation, labels, audio, features, datasets, augmentation, chat import."""
