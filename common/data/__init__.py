"""Data layer: input shapes → one record type, recipes for the seed use cases, splits, manifests."""
