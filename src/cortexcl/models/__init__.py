"""cortexcl.models."""
