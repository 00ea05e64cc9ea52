"""cortexcl.data."""
