"""Data kinds -> map-style datasets yielding (x, y), loaders, augmentation."""
