"""poolserve: an HTTP service for poolcore's pooling methods."""
