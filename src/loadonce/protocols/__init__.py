"""HTTP protocols served over the same models: the plain JSON routes (and, later, /v2)."""
