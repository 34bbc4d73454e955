"""float64 NumPy oracle: one module per family, readable formulas."""
