"""cortexcl.encoding."""
