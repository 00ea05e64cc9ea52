"""cortexcl.data.simulate."""
