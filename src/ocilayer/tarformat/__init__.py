"""Tar encoding (Go-compatible) and reading."""
