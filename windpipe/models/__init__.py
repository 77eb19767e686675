"""Models: the one way to load a model (`loading`), ranking runs (`compare`), the registry's aliases
(`registry`) and the promotion gate (`promotion`)."""
