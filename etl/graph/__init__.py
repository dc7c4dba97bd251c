"""Co-purchase projection, graph filters and graph-aware sample order."""
