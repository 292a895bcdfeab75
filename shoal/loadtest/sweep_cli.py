"""placeholder"""
def sweep() -> None:
    """Sweep batch size x clients x precision."""
