"""cortexcl.tuning."""
