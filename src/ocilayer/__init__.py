"""ocilayer: container filesystem layers to OCI layer tar streams, and back."""

__version__ = "0.1.0"
