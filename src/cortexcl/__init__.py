"""cortexcl."""
