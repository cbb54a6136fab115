"""The HTTP edge (FastAPI): events and feedback in, reports out."""
