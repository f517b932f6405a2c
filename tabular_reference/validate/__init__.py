"""``python -m tabular_reference validate``: a hypergradient estimator against the exact
hypergradient and against HPGD on the tabular harnesses (``docs/validate.md``)."""
