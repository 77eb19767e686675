"""Data: the synthetic OPSD-shaped generator and the raw -> processed transformation."""
