"""shoal: many models per device, one FastAPI process per device."""

__version__ = "0.1.0"
