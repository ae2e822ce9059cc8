"""Layer readers: each turns a layer on disk into a stream of entries."""
