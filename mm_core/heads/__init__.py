"""Task heads: turn match maps into instance labels, densities and tracks."""
